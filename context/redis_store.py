"""Redis HistoryStore: messages in a sorted set, an inverted index beside them, the summary.

The caller says where keys live: `key_of(conversation_id, name)` (the application builds
it from its key module; this library imports nothing of it).  Names used, per
conversation (no TTL):

    messages              zset    score = seq, member = Message JSON
    summary               hash    text, covers_up_to_seq, tokens
    ctx:live              string  the index slot searches read: "1" (also when absent) or "2"
    ctx:build             string  the slot a re-index is building, while it runs
    ctx:done              set     seqs already in the slot being built (no double posting)
    ctx:{slot}:stats      hash    docs (messages indexed), words (their total length)
    ctx:{slot}:vocab      set     every term that has a postings key in the slot
    ctx:{slot}:docs       hash    seq -> the message's indexed terms and length (scoring a
                                  candidate needs no re-analysis of its text)
    ctx:{slot}:p:{term}   string  postings: seqs of the messages holding the term,
                                  8-byte little-endian each, in storage order
    ctx:vocab, ctx:p:{term}       the index of the version before slots (bigram terms),
                                  deleted by the first re-index
    ctx:vec               zset    the messages' quantized embeddings (context/vectors.py);
                                  deleted here with the rest, and by a renumber (the
                                  seqs they point at move: `reindex --embeddings` again)

A postings list is a string appended to (O(1)): its length / 8 is the term's document
frequency, and its tail is the term's most recent postings (one GETRANGE), so a search
never reads more than a fixed number of bytes per term, however long the history.

Re-indexing (new analyser, `mysisterdb reindex`) never stops the service: it builds the
other slot in bounded batches while appends write to both slots, then switches `live`
in one step and deletes the old slot.  A message is stored and indexed by one Lua script,
so it is never stored unindexed nor indexed twice.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from context.relevance import DEFAULT_SEARCH, IndexStats, SearchConfig, search_index
from context.terms import Analysis, analyse
from context.types import Message, ScoredMessage, Summary

logger = logging.getLogger(__name__)

POSTING_BYTES = 8
_BATCH = 500
SLOTS = ("1", "2")

KeyOf = Callable[[str, str], str]

# KEYS: messages, live, build, done, stats1, stats2, vocab1, vocab2, docs1, docs2, then
# the n postings keys of slot 1 and the n of slot 2.
# ARGV: seq, json, packed seq, length, n, encoded terms, the n terms.
_APPEND_LUA = """
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) > 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local n = tonumber(ARGV[5])
local function index(slot)
  local s = (slot == '2') and 1 or 0
  for i = 1, n do redis.call('APPEND', KEYS[10 + s * n + i], ARGV[3]) end
  for i = 7, 6 + n, 500 do
    redis.call('SADD', KEYS[7 + s], unpack(ARGV, i, math.min(i + 499, 6 + n)))
  end
  redis.call('HINCRBY', KEYS[5 + s], 'docs', 1)
  redis.call('HINCRBY', KEYS[5 + s], 'words', ARGV[4])
  redis.call('HSET', KEYS[9 + s], ARGV[1], ARGV[6])
end
local live = redis.call('GET', KEYS[2]) or '1'
index(live)
local build = redis.call('GET', KEYS[3])
if build and build ~= live then
  index(build)
  redis.call('SADD', KEYS[4], ARGV[1])
end
return 1
"""

# One stored message into the slot being built.  KEYS: build, done, stats, vocab, docs, then
# the postings keys.  ARGV: slot, seq, packed seq, length, encoded terms, the terms.
_INDEX_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 0 end
for i = 6, #KEYS do redis.call('APPEND', KEYS[i], ARGV[3]) end
for i = 6, #ARGV, 500 do
  redis.call('SADD', KEYS[4], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('HINCRBY', KEYS[3], 'docs', 1)
redis.call('HINCRBY', KEYS[3], 'words', ARGV[4])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: live, build, done.  ARGV: the slot that was built.
_SWITCH_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# The messages with the seqs in ARGV and their indexed terms (KEYS: messages, docs), in one
# reply: message, terms, message, terms ... (false for what is missing).
_FETCH_LUA = """
local out = {}
for i = 1, #ARGV do
  local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i], 'LIMIT', 0, 1)
  out[2 * i - 1] = found[1] or false
  out[2 * i] = redis.call('HGET', KEYS[2], ARGV[i]) or false
end
return out
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


# Drop exact copies of a member (ARGV[1], kept) that sit at its score, only while it is
# still stored: a copy is never removed unless its twin stays.  KEYS: messages.
_DROP_COPIES_LUA = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at then return 0 end
local dropped = 0
for i = 2, #ARGV do
  if ARGV[i] ~= ARGV[1] and redis.call('ZSCORE', KEYS[1], ARGV[i]) == at then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return dropped
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


def other_slot(slot: str) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def with_seq(raw: bytes | str, seq: int) -> str:
    """A stored member with a new seq and every other field as it was (also fields this
    version does not know)."""
    data = json.loads(raw)
    data["seq"] = seq
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


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


@dataclass(frozen=True, slots=True)
class StoreKeys:
    """The keys of one conversation, from the caller's `key_of(conversation_id, name)`."""

    key_of: KeyOf
    cid: str

    def messages(self) -> str:
        return self.key_of(self.cid, "messages")

    def summary(self) -> str:
        return self.key_of(self.cid, "summary")

    def ctx(self, name: str) -> str:
        return self.key_of(self.cid, "ctx:" + name)

    def stats(self, slot: str) -> str:
        return self.ctx(f"{slot}:stats")

    def vocab(self, slot: str) -> str:
        return self.ctx(f"{slot}:vocab")

    def docs(self, slot: str) -> str:
        return self.ctx(f"{slot}:docs")

    def postings(self, slot: str, term: str) -> str:
        return self.ctx(f"{slot}:p:{term}")

    def legacy_vocab(self) -> str:
        return self.ctx("vocab")

    def legacy_postings(self, term: str) -> str:
        return self.ctx("p:" + term)


@dataclass
class IndexCheck:
    """What `check_index` found; dangling = postings pointing at no stored message,
    unindexed = stored messages the live index does not count (e.g. not re-indexed yet)."""

    messages: int = 0
    terms: int = 0
    postings: int = 0
    dangling: int = 0
    duplicates: int = 0
    unindexed: int = 0
    dangling_examples: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.dangling == 0 and self.duplicates == 0 and self.unindexed == 0


@dataclass
class _Reader:
    client: redis.Redis
    keys: StoreKeys
    fetch_script: Script
    slot: str = SLOTS[0]

    def doc_stats(self, terms: Sequence[str]) -> IndexStats:
        # Both slots in one round trip; the live one is picked from the answer.
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.ctx("live"))
        for slot in SLOTS:
            pipe.hmget(self.keys.stats(slot), ["docs", "words"])
            for term in terms:
                pipe.strlen(self.keys.postings(slot, term))
        live, *rest = pipe.execute()
        self.slot = _text(live) if live else SLOTS[0]
        block = rest[(len(terms) + 1) * SLOTS.index(self.slot):][: len(terms) + 1]
        (docs, words), *lengths = block
        return IndexStats(docs=_int(docs), words=_int(words),
                          dfs=[int(x) // POSTING_BYTES for x in lengths])

    def postings(self, terms: Sequence[str], *, limit: int) -> list[list[int]]:
        if not terms:
            return []
        pipe = self.client.pipeline(transaction=False)
        for term in terms:
            pipe.getrange(self.keys.postings(self.slot, term), -limit * POSTING_BYTES, -1)
        return [unpack_seqs(raw) for raw in pipe.execute()]

    def fetch(self, seqs: Sequence[int]) -> list[tuple[Message, Analysis]]:
        if not seqs:
            return []
        # One script call rather than a pipeline of reads per seq: one reply to parse
        # instead of up to 128, which is most of a read's cost in the client.
        found = self.fetch_script(keys=[self.keys.messages(), self.keys.docs(self.slot)],
                                  args=list(seqs))
        out = []
        for raw, doc in zip(found[::2], found[1::2], strict=True):
            if raw:
                message = Message.from_json(raw)
                out.append((message, Analysis.decode(_text(doc)) if doc else analyse(message.text)))
        return out


class RedisHistoryStore:
    """HistoryStore on Redis; the client must be created with decode_responses=False.

    `key_of(conversation_id, name)` gives the Redis key of each of the names listed in the
    module docstring.
    """

    def __init__(self, redis: redis.Redis, *, key_of: KeyOf) -> None:
        self._redis = redis
        self._key_of = key_of
        self._append = redis.register_script(_APPEND_LUA)
        self._index = redis.register_script(_INDEX_LUA)
        self._switch = redis.register_script(_SWITCH_LUA)
        self._fetch = redis.register_script(_FETCH_LUA)
        self._set_summary = redis.register_script(_SET_SUMMARY_LUA)
        self._drop_copies = redis.register_script(_DROP_COPIES_LUA)

    def keys(self, conversation_id: str) -> StoreKeys:
        return StoreKeys(self._key_of, conversation_id)

    # -- writing ---------------------------------------------------------------

    def _append_args(self, cid: str, message: Message) -> tuple[list[str], list[Any]]:
        k = self.keys(cid)
        analysis = analyse(message.text)
        message_terms = list(analysis.weights)
        script_keys = [k.messages(), k.ctx("live"), k.ctx("build"), k.ctx("done"),
                       k.stats("1"), k.stats("2"), k.vocab("1"), k.vocab("2"),
                       k.docs("1"), k.docs("2"),
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
        return search_index(_Reader(self._redis, self.keys(conversation_id), self._fetch), query=query,
                            before_seq=before_seq, limit=limit, threshold=threshold,
                            config=config or DEFAULT_SEARCH)

    # -- summary -------------------------------------------------------------------

    def get_summary(self, conversation_id: str) -> Summary | None:
        raw = self._redis.hgetall(self.keys(conversation_id).summary())
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return Summary(text=fields["text"], covers_up_to_seq=int(fields["covers_up_to_seq"]),
                       tokens=int(fields["tokens"]))

    def set_summary(self, conversation_id: str, summary: Summary) -> bool:
        k = self.keys(conversation_id)
        stored = self._set_summary(keys=[k.summary(), k.messages()],
                                   args=[summary.text, summary.covers_up_to_seq, summary.tokens])
        return bool(stored)

    # -- maintenance -----------------------------------------------------------------

    def live_slot(self, conversation_id: str) -> str:
        live = self._redis.get(self.keys(conversation_id).ctx("live"))
        return _text(live) if live else SLOTS[0]

    def _drop_terms(self, vocab_key: str, postings_key: Callable[[str], str]) -> None:
        # Postings first, the vocabulary last: if we stop half way, the vocabulary still
        # lists every postings key that is left, and a rerun finds them.
        vocab = [_text(t) for t in self._redis.sscan_iter(vocab_key, count=1000)]
        for batch in _chunks(vocab, _BATCH):
            self._redis.delete(*(postings_key(t) for t in batch))
        self._redis.delete(vocab_key)

    def _drop_slot(self, k: StoreKeys, slot: str) -> None:
        self._drop_terms(k.vocab(slot), lambda t: k.postings(slot, t))
        # UNLINK: a long conversation's docs hash is freed in the background, not while
        # Redis holds every other client waiting.
        self._redis.unlink(k.stats(slot), k.docs(slot))

    def _drop_legacy(self, k: StoreKeys) -> None:
        self._drop_terms(k.legacy_vocab(), k.legacy_postings)

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
        postings = [k.postings(slot, _text(t)) for slot in SLOTS
                    for t in watching.smembers(k.vocab(slot))]
        postings += [k.legacy_postings(_text(t)) for t in watching.smembers(k.legacy_vocab())]
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

    def _messages_from(self, cid: str, *, batch: int) -> Iterator[list[Message]]:
        key = self.keys(cid).messages()
        start = 0
        while True:
            raws = self._redis.zrange(key, start, start + batch - 1)
            yield list(readable(raws, conversation_id=cid))
            if len(raws) < batch:
                return
            start += len(raws)

    def _start_build(self, k: StoreKeys) -> str:
        """The slot to build: the one a crashed re-index left (resumed), else the other one,
        emptied first (nothing reads or writes it until `build` names it)."""
        building = self._redis.get(k.ctx("build"))
        if building:
            return _text(building)
        target = other_slot(self.live_slot(k.cid))
        self._drop_slot(k, target)
        self._redis.delete(k.ctx("done"))
        if not self._redis.set(k.ctx("build"), target, nx=True):
            return _text(self._redis.get(k.ctx("build")) or target)
        return target

    def _index_batch(self, k: StoreKeys, slot: str, messages: list[Message]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for message in messages:
            analysis = analyse(message.text)
            message_terms = list(analysis.weights)
            self._index(keys=[k.ctx("build"), k.ctx("done"), k.stats(slot), k.vocab(slot),
                              k.docs(slot), *(k.postings(slot, t) for t in message_terms)],
                        args=[slot, message.seq, pack_seq(message.seq), analysis.length,
                              analysis.encode(), *message_terms], client=pipe)
        results = pipe.execute()
        if any(r == -1 for r in results):
            raise RuntimeError(f"conversation {k.cid}: the re-index of slot {slot} was "
                               "taken over or finished by another process")
        return sum(1 for r in results if r == 1)

    def rebuild_index(self, conversation_id: str, *, batch: int = _BATCH,
                      pause_s: float = 0.0) -> int:
        """Re-index every stored message with the current analyser, without stopping
        appends or searches; returns how many messages this run indexed.

        Searches keep reading the live slot until the new one is complete; appends write
        to both meanwhile.  Batches of `batch` messages, `pause_s` apart, keep Redis
        responsive.  An interrupted run is resumed by the next one.
        """
        k = self.keys(conversation_id)
        slot = self._start_build(k)
        count = 0
        for messages in self._messages_from(conversation_id, batch=batch):
            count += self._index_batch(k, slot, messages)
            if pause_s > 0:
                time.sleep(pause_s)
        if self._switch(keys=[k.ctx("live"), k.ctx("build"), k.ctx("done")], args=[slot]):
            self._drop_slot(k, other_slot(slot))
            self._drop_legacy(k)
        logger.info("conversation %s: %d messages indexed into slot %s", conversation_id,
                    count, slot)
        return count

    def _stored_seqs(self, cid: str) -> tuple[set[int], set[int]]:
        """Seqs of every stored member, and of those that parse (the ones an index holds)."""
        stored: set[int] = set()
        readable_seqs: set[int] = set()
        for raw, score in self._redis.zscan_iter(self.keys(cid).messages(), count=1000):
            stored.add(int(score))
            if any(True for _ in readable([raw], conversation_id=cid)):
                readable_seqs.add(int(score))
        return stored, readable_seqs

    def check_index(self, conversation_id: str, *, examples: int = 20) -> IndexCheck:
        """Count postings of the live index that point at no stored message (dangling) or
        repeat (duplicates), and stored messages it does not count (unindexed)."""
        k = self.keys(conversation_id)
        slot = self.live_slot(conversation_id)
        stored, indexable = self._stored_seqs(conversation_id)
        report = IndexCheck(messages=len(stored))
        docs = _int(self._redis.hget(k.stats(slot), "docs"))
        # Unreadable members cannot be indexed (check reports them on their own).
        report.unindexed = max(0, len(indexable) - docs)
        vocab = [_text(t) for t in self._redis.sscan_iter(k.vocab(slot), count=1000)]
        for batch in _chunks(vocab, _BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for term in batch:
                pipe.get(k.postings(slot, term))
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

    # -- stored members as they are (for `check`: it judges what does not parse) -------

    def watched_keys(self, conversation_id: str) -> tuple[str, str]:
        """The keys `renumber` rewrites: WATCH them from the reads it is based on."""
        k = self.keys(conversation_id)
        return k.messages(), k.summary()

    def raw_members(self, conversation_id: str, *, client: redis.Redis | None = None,
                    batch: int = 4 * _BATCH) -> Iterator[tuple[bytes, float]]:
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
