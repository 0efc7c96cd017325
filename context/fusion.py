"""Where recall candidates come from, and how rankings from several sources are merged.

The lexical source is `HistoryStore.search` (BM25 over the Redis index).  The semantic one
(context/vectors.py: embeddings of stored messages, searched within a fixed cost) is another
`CandidateSource`; `build_context` merges the rankings with reciprocal rank fusion, which
needs no common scale between a BM25 score and a cosine similarity: only ranks.
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
    score any source gave it, and the newer message that supersedes it if any source says
    so (only the lexical one knows subjects: a semantic hit must not lift that mark)."""
    fused: dict[int, float] = {}
    best: dict[int, ScoredMessage] = {}
    superseded: dict[int, int] = {}
    for ranking in rankings:
        for rank, scored in enumerate(ranking, start=1):
            seq = scored.message.seq
            fused[seq] = fused.get(seq, 0.0) + 1.0 / (k + rank)
            if seq not in best or scored.score > best[seq].score:
                best[seq] = scored
            if scored.superseded_by is not None:
                superseded.setdefault(seq, scored.superseded_by)
    order = sorted(fused, key=lambda seq: (fused[seq], seq), reverse=True)
    return [_marked(best[seq], superseded.get(seq)) for seq in order[:limit]]


def _marked(scored: ScoredMessage, superseded_by: int | None) -> ScoredMessage:
    if superseded_by is None or scored.superseded_by is not None:
        return scored
    return ScoredMessage(message=scored.message, score=scored.score, superseded_by=superseded_by)
