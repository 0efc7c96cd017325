"""Redis HistoryStore: messages in a sorted set, an inverted index beside them, the summary.

The key layout and the packing of postings are in context/redis_layout.py, the Lua
scripts in context/redis_scripts.py, searching and maintaining the index (slots,
re-index, check) in context/redis_index.py.  The names other packages use are importable
from here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import redis

from context.redis_index import IndexCheck, SlotIndex, SlotReader
from context.redis_layout import (
    BATCH,
    POSTING_BYTES,
    SLOTS,
    KeyOf,
    StoreKeys,
    chunks,
    other_slot,
    pack_seq,
    text_of,
    unpack_seqs,
    with_seq,
)
from context.redis_scripts import (
    APPEND_LUA,
    DROP_COPIES_LUA,
    FETCH_LUA,
    REWRITE_LUA,
    SET_SUMMARY_LUA,
)
from context.relevance import DEFAULT_SEARCH, SearchConfig, search_index
from context.terms import analyse
from context.types import Message, ScoredMessage, Summary

__all__ = [
    "POSTING_BYTES", "SLOTS", "IndexCheck", "KeyOf", "RedisHistoryStore", "StoreKeys",
    "other_slot", "pack_seq", "unpack_seqs", "with_seq",
]

logger = logging.getLogger(__name__)


class RedisHistoryStore(SlotIndex):
    """HistoryStore on Redis; the client must be created with decode_responses=False.

    `key_of(conversation_id, name)` gives the Redis key of each of the names listed in
    context/redis_layout.py.
    """

    def __init__(self, redis: redis.Redis, *, key_of: KeyOf) -> None:
        super().__init__(redis, key_of=key_of)
        self._append = redis.register_script(APPEND_LUA)
        self._fetch = redis.register_script(FETCH_LUA)
        self._set_summary = redis.register_script(SET_SUMMARY_LUA)
        self._drop_copies = redis.register_script(DROP_COPIES_LUA)
        self._rewrite_script = redis.register_script(REWRITE_LUA)

    # -- writing ---------------------------------------------------------------

    @staticmethod
    def _write_keys(k: StoreKeys) -> list[str]:
        return [k.messages(), k.ctx("live"), k.ctx("build"), k.ctx("done"),
                k.stats("1"), k.stats("2"), k.vocab("1"), k.vocab("2"), k.docs("1"), k.docs("2")]

    def _append_args(self, cid: str, message: Message) -> tuple[list[str], list[Any]]:
        k = self.keys(cid)
        analysis = analyse(message.text)
        message_terms = list(analysis.weights)
        script_keys = [*self._write_keys(k),
                       *(k.postings("1", t) for t in message_terms),
                       *(k.postings("2", t) for t in message_terms)]
        args: list[Any] = [message.seq, message.to_json(), pack_seq(message.seq),
                           analysis.length, len(message_terms), analysis.encode(),
                           *message_terms]
        return script_keys, args

    def append(self, conversation_id: str, message: Message, *,
               pipe: redis.client.Pipeline | None = None) -> None:
        """Store a message with its index entries. With `pipe` (a MULTI the caller executes),
        the append joins the caller's transaction, e.g. with the job's completion."""
        script_keys, args = self._append_args(conversation_id, message)
        if pipe is not None:
            # EVAL, not EVALSHA: inside MULTI a script missing from the server's cache would
            # fail alone while the rest of the transaction is applied.
            pipe.eval(APPEND_LUA, len(script_keys), *script_keys, *args)
            return
        stored = self._append(keys=script_keys, args=args)
        if not stored:
            logger.info("conversation %s: seq %s already stored, append ignored",
                        conversation_id, message.seq)

    def append_many(self, conversation_id: str, messages: Iterable[Message]) -> None:
        """Bulk import (pipelined); each message is still stored atomically with its index."""
        for batch in chunks(list(messages), BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for message in batch:
                script_keys, args = self._append_args(conversation_id, message)
                self._append(keys=script_keys, args=args, client=pipe)
            pipe.execute()

    @overload
    def replace(self, conversation_id: str, message: Message) -> bool: ...

    @overload
    def replace(self, conversation_id: str, message: Message, *,
                pipe: redis.client.Pipeline) -> None: ...

    def replace(self, conversation_id: str, message: Message, *,
                pipe: redis.client.Pipeline | None = None) -> bool | None:
        """Store `message` (as given: text, tokens and every other field) in place of the
        message at its seq, and its index entries in place of the old text's, in the live
        slot and in a slot being re-indexed; delete the seq's vector (it embeds the old
        text: context/vectors.py).  Never stores a new message: False when none is at that
        seq.  With `pipe` (a MULTI the caller executes) it joins the caller's transaction
        and returns None; the script's reply in EXEC's results is 1 (replaced) or 0.

        A term of both texts moves to the end of its postings, as if the message were new:
        for the postings cap of a search (context/relevance.py) it counts as recent."""
        return self._rewrite(conversation_id, message.seq, message, pipe)

    @overload
    def remove(self, conversation_id: str, seq: int) -> bool: ...

    @overload
    def remove(self, conversation_id: str, seq: int, *, pipe: redis.client.Pipeline) -> None: ...

    def remove(self, conversation_id: str, seq: int, *,
               pipe: redis.client.Pipeline | None = None) -> bool | None:
        """Delete the message at `seq` with its index entries and its vector, as `replace`
        does (False when none is stored there; with `pipe`, None and 1 or 0 in EXEC's
        results).  The seq is then free: `append` may store another message at it."""
        return self._rewrite(conversation_id, seq, None, pipe)

    def _rewrite(self, cid: str, seq: int, message: Message | None,
                 pipe: redis.client.Pipeline | None) -> bool | None:
        k = self.keys(cid)
        args: list[Any]
        if message is None:
            script_keys, args = self._write_keys(k), [seq, "", pack_seq(seq), 0, 0, ""]
        else:
            script_keys, args = self._append_args(cid, message)
        script_keys.append(k.ctx("vec"))
        args += [k.postings_prefix(SLOTS[0]), k.postings_prefix(SLOTS[1])]
        if pipe is not None:
            # EVAL for the reason given in `append`.
            pipe.eval(REWRITE_LUA, len(script_keys), *script_keys, *args)
            return None
        done = bool(self._rewrite_script(keys=script_keys, args=args))
        if not done:
            logger.info("conversation %s: no message at seq %s to replace or remove", cid, seq)
        return done

    # -- reading ---------------------------------------------------------------

    def _parse(self, raws: Iterable[Any]) -> list[Message]:
        # redis-py types its replies loosely; with decode_responses=False these are bytes.
        return [Message.from_json(raw) for raw in raws]

    def last(self, conversation_id: str, *, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        return self._parse(self._redis.zrange(self.keys(conversation_id).messages(), -limit, -1))

    def before(self, conversation_id: str, *, before_seq: int, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        raws = self._redis.zrevrangebyscore(self.keys(conversation_id).messages(),
                                            f"({before_seq}", "-inf", start=0, num=limit)
        return self._parse(reversed(list(raws)))

    def between(
        self, conversation_id: str, *, after_seq: int, before_seq: int, limit: int
    ) -> list[Message]:
        if limit <= 0:
            return []
        raws = self._redis.zrangebyscore(self.keys(conversation_id).messages(), f"({after_seq}",
                                         f"({before_seq}", start=0, num=limit)
        return self._parse(raws)

    def get_many(self, conversation_id: str, seqs: Sequence[int]) -> list[Message]:
        wanted = sorted(set(seqs))
        if not wanted:
            return []
        k = self.keys(conversation_id)
        found = self._fetch(keys=[k.messages(), k.docs("-")], args=wanted)
        return [Message.from_json(raw) for raw in found[::2] if raw]

    def search(
        self, conversation_id: str, *, query: str, before_seq: int, limit: int,
        threshold: float, config: SearchConfig | None = None,
    ) -> list[ScoredMessage]:
        return search_index(SlotReader(self._redis, self.keys(conversation_id), self._fetch), query=query,
                            before_seq=before_seq, limit=limit, threshold=threshold,
                            config=config or DEFAULT_SEARCH)

    # -- summary -------------------------------------------------------------------

    def get_summary(self, conversation_id: str) -> Summary | None:
        raw = self._redis.hgetall(self.keys(conversation_id).summary())
        if not raw:
            return None
        fields = {text_of(k): text_of(v) for k, v in raw.items()}
        return Summary(text=fields["text"], covers_up_to_seq=int(fields["covers_up_to_seq"]),
                       tokens=int(fields["tokens"]))

    def set_summary(self, conversation_id: str, summary: Summary) -> bool:
        k = self.keys(conversation_id)
        stored = self._set_summary(keys=[k.summary(), k.messages()],
                                   args=[summary.text, summary.covers_up_to_seq, summary.tokens])
        return bool(stored)

    # -- the whole conversation --------------------------------------------------------

    def conversation_keys(self, conversation_id: str, *,
                          watching: redis.client.Pipeline) -> list[str]:
        """Every key this store keeps for the conversation, read on a pipeline in WATCH mode
        and watched, so that the caller can delete them all in its transaction and an append
        racing it aborts the transaction. Keep it complete when adding a key."""
        k = self.keys(conversation_id)
        vocabs = [k.vocab(slot) for slot in SLOTS] + [k.legacy_vocab()]
        stored = [k.messages(), k.summary(), k.ctx("live"), k.ctx("build"), k.ctx("done"),
                  k.ctx("vec"), *(key for slot in SLOTS for key in (k.stats(slot), k.docs(slot))), *vocabs]
        watching.watch(*stored)
        postings = [k.postings(slot, text_of(t)) for slot in SLOTS
                    for t in watching.smembers(k.vocab(slot))]
        postings += [k.legacy_postings(text_of(t)) for t in watching.smembers(k.legacy_vocab())]
        return stored + postings

    def reset(self, conversation_id: str) -> None:
        """Delete messages, index, vectors and summary (not atomic: call it on an idle
        conversation)."""
        k = self.keys(conversation_id)
        for slot in SLOTS:
            self._drop_slot(k, slot)
        self._drop_legacy(k)
        self._redis.delete(k.messages(), k.summary(), k.ctx("live"), k.ctx("build"),
                           k.ctx("done"), k.ctx("vec"))
        logger.info("conversation %s: history, index and summary deleted", conversation_id)

    # -- stored members as they are (for `check`: it judges what does not parse) -------

    def watched_keys(self, conversation_id: str) -> tuple[str, str]:
        """The keys `renumber` rewrites: WATCH them from the reads it is based on."""
        k = self.keys(conversation_id)
        return k.messages(), k.summary()

    def raw_members(self, conversation_id: str, *, client: redis.Redis | None = None,
                    batch: int = 4 * BATCH) -> Iterator[tuple[bytes, float]]:
        """Every stored member as stored (bytes, score), in seq order, read `batch` at a
        time; `client` may be a WATCHing pipeline."""
        reader, key, start = client or self._redis, self.keys(conversation_id).messages(), 0
        while True:
            rows: list[Any] = list(reader.zrange(key, start, start + batch - 1, withscores=True))
            yield from rows
            if len(rows) < batch:
                return
            start += len(rows)

    def summary_seq(self, conversation_id: str, *,
                    client: redis.Redis | None = None) -> int | None:
        """The seq the summary covers up to, None without a summary; `client` may be a
        WATCHing pipeline."""
        raw = (client or self._redis).hget(self.keys(conversation_id).summary(),
                                           "covers_up_to_seq")
        return None if raw is None else int(raw)

    def drop_copies(self, conversation_id: str, *, keep: bytes, copies: Sequence[bytes]) -> int:
        """Remove members that are the same message as `keep` (same seq, role and text;
        other bytes) stored at its score, only while `keep` itself is still stored;
        returns how many were removed.  ValueError for a member that is not such a copy."""
        kept = Message.from_json(keep)
        for raw in copies:
            copy = Message.from_json(raw)
            if (copy.seq, copy.role, copy.text) != (kept.seq, kept.role, kept.text):
                raise ValueError(f"conversation {conversation_id}: {raw!r} is not a copy of "
                                 f"seq {kept.seq}")
        if not copies:
            return 0
        return int(self._drop_copies(keys=[self.keys(conversation_id).messages()],
                                     args=[keep, *copies]))

    def renumber(self, conversation_id: str, moves: Iterable[tuple[bytes, int]], *,
                 pipe: redis.client.Pipeline, covers_up_to_seq: int | None = None) -> None:
        """Queue, in the caller's MULTI, moving each stored member (raw bytes) to a new seq
        with every other field kept, and with `covers_up_to_seq` the summary's coverage
        (which may go backwards here, unlike `set_summary`; only for a summary that
        exists).  The caller WATCHes `watched_keys` from its reads, and calls
        `rebuild_index` after EXEC: until then the index points at the old seqs."""
        k, moved = self.keys(conversation_id), list(moves)
        for raw, _ in moved:
            pipe.zrem(k.messages(), raw)
        for raw, seq in moved:
            pipe.zadd(k.messages(), {with_seq(raw, seq): seq})
        if covers_up_to_seq is not None:
            pipe.hset(k.summary(), "covers_up_to_seq", covers_up_to_seq)
        # Vectors are stored by seq: after a move they would answer for the wrong message.
        pipe.delete(k.ctx("vec"))
