"""Where recall candidates come from, and how rankings from several sources are merged.

Today the only source is lexical (`HistoryStore.search`, BM25 over the Redis index).  A
semantic source (embeddings of stored messages, searched within a fixed cost) plugs in as
another `CandidateSource`; `build_context` merges the rankings with reciprocal rank fusion,
which needs no common scale between a BM25 score and a cosine similarity: only ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from context.types import ScoredMessage

logger = logging.getLogger(__name__)

RRF_K = 60  # the constant of Cormack et al. (2009): damps the weight of the very top ranks


class CandidateSource(Protocol):
    """Older messages relevant to a query, best first, each with its source's own 0..1 score
    (already cut at that source's floor)."""

    def candidates(self, *, conversation_id: str, query: str, before_seq: int,
                   limit: int) -> list[ScoredMessage]: ...


def reciprocal_rank_fusion(rankings: Sequence[Sequence[ScoredMessage]], *, limit: int,
                           k: int = RRF_K) -> list[ScoredMessage]:
    """One ranking from several: Σ 1/(k + rank) over the rankings a message appears in
    (rank from 1), best first, ties to the newer message.  Each message keeps the best
    score any source gave it."""
    fused: dict[int, float] = {}
    best: dict[int, ScoredMessage] = {}
    for ranking in rankings:
        for rank, scored in enumerate(ranking, start=1):
            seq = scored.message.seq
            fused[seq] = fused.get(seq, 0.0) + 1.0 / (k + rank)
            if seq not in best or scored.score > best[seq].score:
                best[seq] = scored
    order = sorted(fused, key=lambda seq: (fused[seq], seq), reverse=True)
    return [best[seq] for seq in order[:limit]]
