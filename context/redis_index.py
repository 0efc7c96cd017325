"""The recall index of the Redis HistoryStore: search reads, re-index, check.

Re-indexing (new analyser, `mysisterdb reindex`) never stops the service: it builds the
other slot in bounded batches while appends write to both slots, then switches `live`
in one step and deletes the old slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from context.redis_layout import (
    BATCH,
    POSTING_BYTES,
    SLOTS,
    KeyOf,
    StoreKeys,
    chunks,
    int_of,
    other_slot,
    pack_seq,
    readable,
    text_of,
    unpack_seqs,
)
from context.redis_scripts import INDEX_LUA, SWITCH_LUA
from context.relevance import IndexStats
from context.terms import Analysis, analyse
from context.types import Message

logger = logging.getLogger(__name__)


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
class SlotReader:
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
        self.slot = text_of(live) if live else SLOTS[0]
        block = rest[(len(terms) + 1) * SLOTS.index(self.slot):][: len(terms) + 1]
        (docs, words), *lengths = block
        return IndexStats(docs=int_of(docs), words=int_of(words),
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
                out.append((message, Analysis.decode(text_of(doc)) if doc else analyse(message.text)))
        return out



class SlotIndex:
    """The recall index of each conversation kept in two slots, so that a re-index can
    build one while searches read the other: re-index, check, slot housekeeping.

    RedisHistoryStore is one; it writes the index entries of each message it stores."""

    def __init__(self, redis: redis.Redis, *, key_of: KeyOf) -> None:
        self._redis = redis
        self._key_of = key_of
        self._index = redis.register_script(INDEX_LUA)
        self._switch = redis.register_script(SWITCH_LUA)

    def keys(self, conversation_id: str) -> StoreKeys:
        return StoreKeys(self._key_of, conversation_id)

    def live_slot(self, conversation_id: str) -> str:
        live = self._redis.get(self.keys(conversation_id).ctx("live"))
        return text_of(live) if live else SLOTS[0]

    def _drop_terms(self, vocab_key: str, postings_key: Callable[[str], str]) -> None:
        # Postings first, the vocabulary last: if we stop half way, the vocabulary still
        # lists every postings key that is left, and a rerun finds them.
        vocab = [text_of(t) for t in self._redis.sscan_iter(vocab_key, count=1000)]
        for batch in chunks(vocab, BATCH):
            self._redis.delete(*(postings_key(t) for t in batch))
        self._redis.delete(vocab_key)

    def _drop_slot(self, k: StoreKeys, slot: str) -> None:
        self._drop_terms(k.vocab(slot), lambda t: k.postings(slot, t))
        # UNLINK: a long conversation's docs hash is freed in the background, not while
        # Redis holds every other client waiting.
        self._redis.unlink(k.stats(slot), k.docs(slot))

    def _drop_legacy(self, k: StoreKeys) -> None:
        self._drop_terms(k.legacy_vocab(), k.legacy_postings)


    def _messages_from(self, cid: str, *, batch: int) -> Iterator[list[Message]]:
        # Paged by seq, not by rank: a message removed meanwhile would shift every rank
        # after it, and the page after it would start one message too far.
        key, after = self.keys(cid).messages(), "-inf"
        while True:
            rows: list[Any] = list(self._redis.zrangebyscore(key, after, "+inf", start=0,
                                                             num=batch, withscores=True))
            yield list(readable((raw for raw, _ in rows), conversation_id=cid))
            if len(rows) < batch:
                return
            after = f"({int(rows[-1][1])}"

    def _start_build(self, k: StoreKeys) -> str:
        """The slot to build: the one a crashed re-index left (resumed), else the other one,
        emptied first (nothing reads or writes it until `build` names it)."""
        building = self._redis.get(k.ctx("build"))
        if building:
            return text_of(building)
        target = other_slot(self.live_slot(k.cid))
        self._drop_slot(k, target)
        self._redis.delete(k.ctx("done"))
        if not self._redis.set(k.ctx("build"), target, nx=True):
            return text_of(self._redis.get(k.ctx("build")) or target)
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

    def rebuild_index(self, conversation_id: str, *, batch: int = BATCH,
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
        docs = int_of(self._redis.hget(k.stats(slot), "docs"))
        # Unreadable members cannot be indexed (check reports them on their own).
        report.unindexed = max(0, len(indexable) - docs)
        vocab = [text_of(t) for t in self._redis.sscan_iter(k.vocab(slot), count=1000)]
        for batch in chunks(vocab, BATCH):
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

