"""Relevance of older messages to a new one: IDF-weighted term coverage over an inverted index.

score(candidate) = sum of w(t) for query terms t found in the candidate
                   / sum of w(t) for all query terms,        w(t) = idf(t) * term_weight(t)

so 1.0 means every term of the query appears in the candidate.  The index only gives
candidates; the final score is computed on the candidates' own text, so it is exact.
Query cost is bounded whatever the history length: at most `max_expanded_terms` terms
are looked up, each reading at most its `postings_cap` most recent postings
(the document-frequency cap), and at most `max_candidates` messages are fetched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from context.terms import term_weight, terms
from context.types import Message, ScoredMessage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SearchConfig:
    max_query_terms: int = 256
    max_expanded_terms: int = 48
    postings_cap: int = 256
    max_candidates: int = 64


DEFAULT_SEARCH = SearchConfig()


class IndexReader(Protocol):
    """The three reads a search needs; each store answers each in one round trip."""

    def doc_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        """Number of indexed messages, and the document frequency of each term."""
        ...

    def postings(self, terms: Sequence[str], *, limit: int) -> list[list[int]]:
        """For each term, the seqs of (at most `limit` of) the most recent messages holding it."""
        ...

    def fetch(self, seqs: Sequence[int]) -> list[Message]:
        """The messages with these seqs (missing ones are skipped)."""
        ...


def idf(df: int, n: int) -> float:
    # BM25's IDF with +1 inside the log: always positive, also for terms in most messages.
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def score_text(weights: dict[str, float], total: float, text: str) -> float:
    if total <= 0:
        return 0.0
    present = set(terms(text))
    hit = sum(w for t, w in weights.items() if t in present)
    return min(1.0, hit / total)


def _weights(query_terms: list[str], n: int, dfs: list[int]) -> dict[str, float]:
    return {t: idf(df, n) * term_weight(t) for t, df in zip(query_terms, dfs, strict=True)}


def _expanded(weights: dict[str, float], dfs: dict[str, int], config: SearchConfig) -> list[str]:
    # Rare terms first: they carry the most weight and have the shortest postings.
    known = [t for t in weights if dfs[t] > 0]
    known.sort(key=lambda t: weights[t], reverse=True)
    return known[: config.max_expanded_terms]


def _candidates(
    *, expanded: list[str], postings: list[list[int]], weights: dict[str, float],
    before_seq: int,
) -> dict[int, float]:
    partial: dict[int, float] = {}
    for term, seqs in zip(expanded, postings, strict=True):
        w = weights[term]
        for seq in set(seqs):
            if seq < before_seq:
                partial[seq] = partial.get(seq, 0.0) + w
    return partial


def _shortlist(
    *, partial: dict[int, float], slack: float, total: float, threshold: float,
    config: SearchConfig,
) -> list[int]:
    # `slack` is the weight a candidate might still gain from terms whose postings were
    # capped or not read: anyone below threshold even with it can be skipped unfetched.
    # The epsilon absorbs float summation order: a full match must not fall just short.
    possible = [s for s, p in partial.items() if (p + slack) / total + 1e-9 >= threshold]
    possible.sort(key=lambda s: (partial[s], s), reverse=True)
    return possible[: config.max_candidates]


def search_index(
    reader: IndexReader, *, query: str, before_seq: int, limit: int, threshold: float,
    config: SearchConfig = DEFAULT_SEARCH,
) -> list[ScoredMessage]:
    """Messages with seq < before_seq scoring >= threshold, best first (ties: newest first)."""
    query_terms = terms(query)[: config.max_query_terms]
    if not query_terms or limit <= 0:
        return []
    n, df_list = reader.doc_stats(query_terms)
    if n == 0:
        return []
    dfs = dict(zip(query_terms, df_list, strict=True))
    weights = _weights(query_terms, n, df_list)
    total = sum(weights.values())
    expanded = _expanded(weights, dfs, config)
    postings = reader.postings(expanded, limit=config.postings_cap)
    partial = _candidates(expanded=expanded, postings=postings, weights=weights,
                          before_seq=before_seq)
    full = {t for t, seqs in zip(expanded, postings, strict=True) if dfs[t] <= len(seqs)}
    slack = sum(w for t, w in weights.items() if dfs[t] > 0 and t not in full)
    seqs = _shortlist(partial=partial, slack=slack, total=total, threshold=threshold,
                      config=config)
    scored = [ScoredMessage(m, score_text(weights, total, m.text)) for m in reader.fetch(seqs)]
    kept = [s for s in scored if s.score >= threshold and s.message.seq < before_seq]
    kept.sort(key=lambda s: (s.score, s.message.seq), reverse=True)
    logger.debug("search: %d terms, %d candidates, %d fetched, %d kept",
                 len(query_terms), len(partial), len(seqs), len(kept))
    return kept[:limit]
