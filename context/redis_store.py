"""Redis HistoryStore: messages in a sorted set, an inverted index beside them, the summary.

Keys (all under keys.conv_prefix(cid), no TTL):
    conv_messages(cid)             zset    score = seq, member = Message JSON
    conv_summary(cid)              hash    text, covers_up_to_seq, tokens
    conv_context(cid, "vocab")     set     every term that has a postings key
    conv_context(cid, "p:" + term) string  postings: seqs of the messages holding the term,
                                           8-byte little-endian each, in storage order

A postings list is a string appended to (O(1)): its length / 8 is the term's document
frequency, and its tail is the term's most recent postings (one GETRANGE), so a search
never reads more than a fixed number of bytes per term, however long the history.
"""

from __future__ import annotations

import logging
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from context.relevance import DEFAULT_SEARCH, SearchConfig, search_index
from context.terms import terms
from context.types import Message, ScoredMessage, Summary
from mysisterdb import keys

logger = logging.getLogger(__name__)

POSTING_BYTES = 8
_BATCH = 500

# Storing and indexing happen in one script so that a message is never stored without
# its postings (or indexed twice when a worker retries the same append).
_APPEND_LUA = """
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) > 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
for i = 3, #KEYS do redis.call('APPEND', KEYS[i], ARGV[3]) end
for i = 4, #ARGV, 500 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return 1
"""

_INDEX_LUA = """
for i = 2, #KEYS do redis.call('APPEND', KEYS[i], ARGV[1]) end
for i = 2, #ARGV, 500 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return 1
"""

# Summaries are written by workers that may finish out of order: never go backwards. A
# conversation deleted (or reset) while its summary was being written gets none.
_SET_SUMMARY_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'covers_up_to_seq')
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'text', ARGV[1], 'covers_up_to_seq', ARGV[2], 'tokens', ARGV[3])
return 1
"""


def pack_seq(seq: int) -> bytes:
    return seq.to_bytes(POSTING_BYTES, "little", signed=True)


def unpack_seqs(raw: bytes) -> list[int]:
    usable = len(raw) - len(raw) % POSTING_BYTES
    values = array("q")
    values.frombytes(raw[:usable])
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def _vocab_key(cid: str) -> str:
    return keys.conv_context(cid, "vocab")


def _postings_key(cid: str, term: str) -> str:
    return keys.conv_context(cid, "p:" + term)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def readable(raws: Iterable[Any], *, conversation_id: str) -> Iterator[Message]:
    """The messages that parse; an unreadable one is skipped (and left for `check`)."""
    for raw in raws:
        try:
            yield Message.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("conversation %s: unreadable message skipped: %s", conversation_id,
                           exc)


@dataclass
class IndexCheck:
    """What `check_index` found; dangling = postings pointing at no stored message."""

    messages: int = 0
    terms: int = 0
    postings: int = 0
    dangling: int = 0
    duplicates: int = 0
    dangling_examples: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.dangling == 0 and self.duplicates == 0


@dataclass
class _Reader:
    client: redis.Redis
    cid: str

    def doc_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(keys.conv_messages(self.cid))
        for term in terms:
            pipe.strlen(_postings_key(self.cid, term))
        n, *lengths = pipe.execute()
        return int(n), [int(x) // POSTING_BYTES for x in lengths]

    def postings(self, terms: Sequence[str], *, limit: int) -> list[list[int]]:
        if not terms:
            return []
        pipe = self.client.pipeline(transaction=False)
        for term in terms:
            pipe.getrange(_postings_key(self.cid, term), -limit * POSTING_BYTES, -1)
        return [unpack_seqs(raw) for raw in pipe.execute()]

    def fetch(self, seqs: Sequence[int]) -> list[Message]:
        if not seqs:
            return []
        pipe = self.client.pipeline(transaction=False)
        key = keys.conv_messages(self.cid)
        for seq in seqs:
            pipe.zrangebyscore(key, seq, seq)
        return [Message.from_json(raw) for found in pipe.execute() for raw in found[:1]]


class RedisHistoryStore:
    """HistoryStore on Redis; the client must be created with decode_responses=False."""

    def __init__(self, redis: redis.Redis) -> None:
        self._redis = redis
        self._append = redis.register_script(_APPEND_LUA)
        self._index = redis.register_script(_INDEX_LUA)
        self._set_summary = redis.register_script(_SET_SUMMARY_LUA)

    # -- writing ---------------------------------------------------------------

    def _append_args(self, cid: str, message: Message) -> tuple[list[str], list[Any]]:
        message_terms = terms(message.text)
        script_keys = [keys.conv_messages(cid), _vocab_key(cid),
                       *(_postings_key(cid, t) for t in message_terms)]
        args: list[Any] = [message.seq, message.to_json(), pack_seq(message.seq), *message_terms]
        return script_keys, args

    def append(self, conversation_id: str, message: Message, *,
               pipe: redis.client.Pipeline | None = None) -> None:
        """Store a message with its index entries. With `pipe` (a MULTI the caller executes),
        the append joins the caller's transaction, e.g. with the job's completion."""
        script_keys, args = self._append_args(conversation_id, message)
        if pipe is not None:
            # EVAL, not EVALSHA: inside MULTI a script missing from the server's cache would
            # fail alone while the rest of the transaction is applied.
            pipe.eval(_APPEND_LUA, len(script_keys), *script_keys, *args)
            return
        stored = self._append(keys=script_keys, args=args)
        if not stored:
            logger.info("conversation %s: seq %s already stored, append ignored",
                        conversation_id, message.seq)

    def append_many(self, conversation_id: str, messages: Iterable[Message]) -> None:
        """Bulk import (pipelined); each message is still stored atomically with its index."""
        for batch in _chunks(list(messages), _BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for message in batch:
                script_keys, args = self._append_args(conversation_id, message)
                self._append(keys=script_keys, args=args, client=pipe)
            pipe.execute()

    # -- reading ---------------------------------------------------------------

    def _parse(self, raws: Iterable[Any]) -> list[Message]:
        # redis-py types its replies loosely; with decode_responses=False these are bytes.
        return [Message.from_json(raw) for raw in raws]

    def last(self, conversation_id: str, *, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        return self._parse(self._redis.zrange(keys.conv_messages(conversation_id), -limit, -1))

    def before(self, conversation_id: str, *, before_seq: int, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        raws = self._redis.zrevrangebyscore(keys.conv_messages(conversation_id),
                                            f"({before_seq}", "-inf", start=0, num=limit)
        return self._parse(reversed(list(raws)))

    def between(
        self, conversation_id: str, *, after_seq: int, before_seq: int, limit: int
    ) -> list[Message]:
        if limit <= 0:
            return []
        raws = self._redis.zrangebyscore(keys.conv_messages(conversation_id), f"({after_seq}",
                                         f"({before_seq}", start=0, num=limit)
        return self._parse(raws)

    def search(
        self, conversation_id: str, *, query: str, before_seq: int, limit: int,
        threshold: float, config: SearchConfig | None = None,
    ) -> list[ScoredMessage]:
        return search_index(_Reader(self._redis, conversation_id), query=query,
                            before_seq=before_seq, limit=limit, threshold=threshold,
                            config=config or DEFAULT_SEARCH)

    # -- summary -------------------------------------------------------------------

    def get_summary(self, conversation_id: str) -> Summary | None:
        raw = self._redis.hgetall(keys.conv_summary(conversation_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return Summary(text=fields["text"], covers_up_to_seq=int(fields["covers_up_to_seq"]),
                       tokens=int(fields["tokens"]))

    def set_summary(self, conversation_id: str, summary: Summary) -> bool:
        stored = self._set_summary(keys=[keys.conv_summary(conversation_id),
                                         keys.conv_messages(conversation_id)],
                                   args=[summary.text, summary.covers_up_to_seq, summary.tokens])
        return bool(stored)

    # -- maintenance -----------------------------------------------------------------

    def _vocab(self, cid: str) -> list[str]:
        return [_text(t) for t in self._redis.sscan_iter(_vocab_key(cid), count=1000)]

    def _drop_index(self, cid: str) -> None:
        # Postings first, the vocabulary last: if we stop half way, the vocabulary still
        # lists every postings key that is left, and a rerun finds them.
        for batch in _chunks(self._vocab(cid), _BATCH):
            self._redis.delete(*(_postings_key(cid, t) for t in batch))
        self._redis.delete(_vocab_key(cid))

    def conversation_keys(self, conversation_id: str, *,
                          watching: redis.client.Pipeline) -> list[str]:
        """Every key this store keeps for the conversation, read on a pipeline in WATCH mode
        and watched, so that the caller can delete them all in its transaction and an append
        racing it aborts the transaction. Keep it complete when adding a key."""
        stored = [keys.conv_messages(conversation_id), keys.conv_summary(conversation_id),
                  _vocab_key(conversation_id)]
        watching.watch(*stored)
        vocab = [_text(t) for t in watching.smembers(_vocab_key(conversation_id))]
        return stored + [_postings_key(conversation_id, t) for t in vocab]

    def reset(self, conversation_id: str) -> None:
        """Delete messages, index and summary (not atomic: call it on an idle conversation)."""
        self._drop_index(conversation_id)
        self._redis.delete(keys.conv_messages(conversation_id), keys.conv_summary(conversation_id))
        logger.info("conversation %s: history, index and summary deleted", conversation_id)

    def _all_messages(self, cid: str) -> Iterator[Message]:
        key = keys.conv_messages(cid)
        start = 0
        while True:
            raws = self._redis.zrange(key, start, start + _BATCH * 4 - 1)
            yield from readable(raws, conversation_id=cid)
            if len(raws) < _BATCH * 4:
                return
            start += len(raws)

    def rebuild_index(self, conversation_id: str) -> int:
        """Rebuild the index from the stored messages; returns how many were indexed.

        Meant for `mysisterdb check --repair` on an idle conversation: a message appended
        while it runs may end up indexed twice (harmless for scores, reported by check).
        """
        self._drop_index(conversation_id)
        count = 0
        pipe = self._redis.pipeline(transaction=False)
        for message in self._all_messages(conversation_id):
            message_terms = terms(message.text)
            script_keys = [_vocab_key(conversation_id),
                           *(_postings_key(conversation_id, t) for t in message_terms)]
            self._index(keys=script_keys, args=[pack_seq(message.seq), *message_terms],
                        client=pipe)
            count += 1
            if count % _BATCH == 0:
                pipe.execute()
        pipe.execute()
        logger.info("conversation %s: index rebuilt from %d messages", conversation_id, count)
        return count

    def _stored_seqs(self, cid: str) -> set[int]:
        key = keys.conv_messages(cid)
        return {int(score) for _, score in self._redis.zscan_iter(key, count=1000)}

    def check_index(self, conversation_id: str, *, examples: int = 20) -> IndexCheck:
        """Count postings that point at no stored message (dangling) or repeat (duplicates)."""
        stored = self._stored_seqs(conversation_id)
        report = IndexCheck(messages=len(stored))
        for batch in _chunks(self._vocab(conversation_id), _BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for term in batch:
                pipe.get(_postings_key(conversation_id, term))
            for term, raw in zip(batch, pipe.execute(), strict=True):
                self._check_postings(report, term, unpack_seqs(raw or b""), stored, examples)
        return report

    @staticmethod
    def _check_postings(
        report: IndexCheck, term: str, seqs: list[int], stored: set[int], examples: int
    ) -> None:
        report.terms += 1
        report.postings += len(seqs)
        report.duplicates += len(seqs) - len(set(seqs))
        for seq in set(seqs) - stored:
            report.dangling += 1
            if len(report.dangling_examples) < examples:
                report.dangling_examples.append((term, seq))
