"""Semantic recall: message embeddings stored quantized in Redis, searched within a fixed cost.

Storage, per conversation, under the caller's `key_of(conversation_id, "ctx:vec")` (no TTL,
deleted with the conversation):

    ctx:vec   zset   score = seq, member = seq (8 bytes LE) + scale (float32 LE) + int8 × dim

A vector is L2-normalised, then quantized to int8 with one scale per vector (max |v| / 127):
a 768-dim vector takes 780 bytes instead of 3 KB of float32, and the cosine computed from it
differs from the exact one by well under 0.01 (tests/context/test_vectors.py).  Writing is one
Lua script per batch that skips a seq already embedded (a task run twice stores nothing
twice) and stores nothing for a conversation that no longer has messages (deleted meanwhile).

**Bounded cost.**  A query reads the newest `scan_max` vectors older than the recent window
(one ZREVRANGEBYSCORE ... LIMIT: O(log n + scan_max)), scores them with one matrix product,
and fetches the best `limit` messages (one script call).  The cost depends on `scan_max`,
never on the history's length; the price is that semantic recall reaches only the newest
`scan_max` messages: older ones are found by the lexical index alone (docs/context.md).

`SemanticSource` is a `CandidateSource` (context/fusion.py): `build_context(sources=[...])`
merges its ranking with the lexical one by reciprocal rank fusion.  The query's embedding
comes from a callable the application gives (the worker asks Gemini with a short deadline);
it returns None when it could not get one, and recall is then lexical only.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from context.store import HistoryStore
from context.types import ScoredMessage

logger = logging.getLogger(__name__)

SEQ_BYTES = 8
SCALE_BYTES = 4
HEADER_BYTES = SEQ_BYTES + SCALE_BYTES
INT8_MAX = 127
DEFAULT_SCAN_MAX = 1000
# Below this cosine a vector is no candidate at all.  Gemini's embeddings of unrelated
# sentences sit around 0.5-0.6 (a high baseline); the simulator's near 0.  A setting.
DEFAULT_MIN_SIMILARITY = 0.6

KeyOf = Callable[[str, str], str]
QueryEmbedder = Callable[[str], Sequence[float] | None]

# KEYS: vectors, messages.  ARGV: seq, member, seq, member ...  Returns how many were stored.
_STORE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local stored = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZCOUNT', KEYS[1], ARGV[i], ARGV[i]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    stored = stored + 1
  end
end
return stored
"""

# KEYS: vectors.  ARGV: after, before (exclusive).  The seqs embedded in that range (the
# members stay in Redis: only their scores cross the wire).
_SEQS_LUA = """
local out = {}
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '(' .. ARGV[2], 'WITHSCORES')
for i = 2, #rows, 2 do out[#out + 1] = rows[i] end
return out
"""


def quantize(vector: Sequence[float]) -> tuple[float, np.ndarray]:
    """(scale, int8 values) of the L2-normalised vector; scale 0 for a zero vector."""
    values = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(values))
    if norm == 0.0:
        return 0.0, np.zeros(len(values), dtype=np.int8)
    values = values / norm
    scale = float(np.abs(values).max()) / INT8_MAX
    return scale, np.clip(np.rint(values / scale), -INT8_MAX, INT8_MAX).astype(np.int8)


def pack(seq: int, vector: Sequence[float]) -> bytes:
    scale, values = quantize(vector)
    return seq.to_bytes(SEQ_BYTES, "little", signed=True) + struct.pack("<f", scale) + \
        values.tobytes()


def unpack(raw: bytes) -> tuple[int, float, np.ndarray]:
    seq = int.from_bytes(raw[:SEQ_BYTES], "little", signed=True)
    (scale,) = struct.unpack("<f", raw[SEQ_BYTES:HEADER_BYTES])
    return seq, scale, np.frombuffer(raw, dtype=np.int8, offset=HEADER_BYTES)


def dequantize(raw: bytes) -> np.ndarray:
    _, scale, values = unpack(raw)
    return values.astype(np.float32) * scale


def similarities(raws: Sequence[bytes], query: Sequence[float]) -> tuple[list[int], np.ndarray]:
    """Seqs and cosines of the packed vectors against the query (one matrix product).
    Vectors of another dimension than the query's (the model changed) are skipped."""
    q = np.asarray(query, dtype=np.float32)
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        return [], np.zeros(0, dtype=np.float32)
    q = q / norm
    width = HEADER_BYTES + len(q)
    usable = [raw for raw in raws if len(raw) == width]
    if not usable:
        return [], np.zeros(0, dtype=np.float32)
    block = np.frombuffer(b"".join(usable), dtype=np.uint8).reshape(len(usable), width)
    seqs = block[:, :SEQ_BYTES].copy().view("<i8").ravel()
    scales = block[:, SEQ_BYTES:HEADER_BYTES].copy().view("<f4").ravel()
    values = block[:, HEADER_BYTES:].view(np.int8).astype(np.float32)
    return [int(s) for s in seqs], (values @ q) * scales


def top_matches(seqs: Sequence[int], cosines: np.ndarray, *, limit: int,
                min_similarity: float) -> list[tuple[int, float]]:
    """The best `limit` (seq, cosine) at or above min_similarity, best first, newer on ties."""
    above = np.flatnonzero(cosines >= min_similarity)
    if len(above) > limit:  # only the best `limit` are sorted in Python
        above = above[np.argpartition(-cosines[above], limit - 1)[:limit]]
    ranked = sorted(((float(cosines[i]), seqs[int(i)]) for i in above), reverse=True)
    return [(s, c) for c, s in ranked]


@dataclass
class RedisVectorStore:
    """The quantized vectors of each conversation's messages (see the module docstring)."""

    client: redis.Redis
    key_of: KeyOf

    def __post_init__(self) -> None:
        self._store = self.client.register_script(_STORE_LUA)
        self._seqs = self.client.register_script(_SEQS_LUA)

    def key(self, conversation_id: str) -> str:
        return self.key_of(conversation_id, "ctx:vec")

    def store(self, conversation_id: str, vectors: Iterable[tuple[int, Sequence[float]]]) -> int:
        """Store (seq, vector) pairs whose seq has none yet; returns how many were stored."""
        args: list[int | bytes] = []
        for seq, vector in vectors:
            args += [seq, pack(seq, vector)]
        if not args:
            return 0
        return int(self._store(keys=[self.key(conversation_id),
                                     self.key_of(conversation_id, "messages")], args=args))

    def embedded_seqs(self, conversation_id: str, *, after_seq: int, before_seq: int) -> set[int]:
        """Seqs with a vector, after_seq < seq < before_seq (keep the range bounded)."""
        found = self._seqs(keys=[self.key(conversation_id)], args=[after_seq, before_seq])
        return {int(float(s)) for s in found}

    def newest(self, conversation_id: str, *, before_seq: int, limit: int) -> list[bytes]:
        """The packed vectors of the newest `limit` messages with seq < before_seq."""
        if limit <= 0:
            return []
        raws: list[Any] = self.client.zrevrangebyscore(  # type: ignore[assignment]
            self.key(conversation_id), f"({before_seq}", "-inf", start=0, num=limit)
        return raws

    def count(self, conversation_id: str) -> int:
        return int(self.client.zcard(self.key(conversation_id)))


class SemanticSource:
    """Recall candidates by meaning: cosine of the query's embedding against the newest
    `scan_max` stored vectors.  `status` says what the last call did, for the job's detail
    ("k of n vectors", "no vectors", "lexical only (no query embedding)"), and `outcome`
    the same as one word for a metric (used, no_vectors, lexical_only)."""

    def __init__(self, *, vectors: RedisVectorStore, history: HistoryStore,
                 embed_query: QueryEmbedder, scan_max: int = DEFAULT_SCAN_MAX,
                 min_similarity: float = DEFAULT_MIN_SIMILARITY) -> None:
        self._vectors = vectors
        self._history = history
        self._embed_query = embed_query
        self._scan_max = scan_max
        self._min_similarity = min_similarity
        self.status = "not asked"
        self.outcome = "not_asked"

    def candidates(self, *, conversation_id: str, query: str, before_seq: int,
                   limit: int) -> list[ScoredMessage]:
        raws = self._vectors.newest(conversation_id, before_seq=before_seq, limit=self._scan_max)
        if not raws:
            # Nothing to compare with: no embedding call on the reply path at all.
            self.status, self.outcome = "no vectors", "no_vectors"
            return []
        query_vector = self._embed_query(query)
        if query_vector is None:
            self.status = "lexical only (no query embedding)"
            self.outcome = "lexical_only"
            return []
        seqs, cosines = similarities(raws, query_vector)
        best = top_matches(seqs, cosines, limit=limit, min_similarity=self._min_similarity)
        found = {m.seq: m for m in self._history.get_many(conversation_id, [s for s, _ in best])}
        out = [ScoredMessage(message=found[seq], score=self._score(cosine))
               for seq, cosine in best if seq in found]
        self.status, self.outcome = f"{len(out)} of {len(raws)} vectors", "used"
        return out

    def _score(self, cosine: float) -> float:
        # 0 at the floor, 1 for the same meaning: a 0..1 score like the lexical one's.
        return max(0.0, min(1.0, (cosine - self._min_similarity) / (1.0 - self._min_similarity)))
