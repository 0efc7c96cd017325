"""Relevance of older messages to a new one: BM25 over an inverted index, normalised to 0..1.

For the query's terms t that occur in the history (`known`), with w(t) = idf(t) × the
term's weight in the query (1 for a word, less for a compound's parts and fallback bigrams):

    score(d) = Σ_{t ∈ known ∩ d} w(t) · min(1, bm25_tf(tf, |d|)) / Σ_{t ∈ known} w(t)
    bm25_tf(tf, |d|) = tf·(k1 + 1) / (tf + k1·(1 − b + b·|d| / avgdl))

so 1.0 means every known term of the question is in the message and the message is not
longer than average; a long message is discounted as in BM25 (k1 = 1.2, b = 0.75).  The
per-term factor is capped at 1 so that a short message matching half the question does
not look like a full match; the uncapped sum breaks ties.  A query term that no earlier
message contains is left out of the denominator: it could never match, and a good match
must not be pushed under the threshold by it.

Newer wins: when two candidates match nearly the same query terms (weighted Jaccard of
their matched terms >= `same_subject`), the newer is ranked just above the older — a
changed PIN or a moved meeting comes back ahead of what it replaced.

Query cost is bounded whatever the history length: at most `max_expanded_terms` terms
are looked up, each reading at most its `postings_cap` most recent postings (the
document-frequency cap), and at most `max_candidates` messages are fetched and scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from context.terms import Analysis, analyse
from context.types import Message, ScoredMessage

logger = logging.getLogger(__name__)

K1 = 1.2
B = 0.75


@dataclass(frozen=True, slots=True)
class SearchConfig:
    max_query_terms: int = 256
    max_expanded_terms: int = 48
    postings_cap: int = 256
    max_candidates: int = 64
    same_subject: float = 0.6


DEFAULT_SEARCH = SearchConfig()


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Indexed messages, their total length in words, and each asked term's document count."""

    docs: int
    words: int
    dfs: list[int]

    @property
    def avgdl(self) -> float:
        return self.words / self.docs if self.docs and self.words else 1.0


class IndexReader(Protocol):
    """The three reads a search needs; each store answers each in one round trip."""

    def doc_stats(self, terms: Sequence[str]) -> IndexStats: ...

    def postings(self, terms: Sequence[str], *, limit: int) -> list[list[int]]:
        """For each term, the seqs of (at most `limit` of) the most recent messages holding it."""
        ...

    def fetch(self, seqs: Sequence[int]) -> list[tuple[Message, Analysis]]:
        """The messages with these seqs (missing ones are skipped), each with its terms as
        indexed (term counts and length)."""
        ...


def idf(df: int, n: int) -> float:
    # BM25's IDF with +1 inside the log: always positive, also for terms in most messages.
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def tf_factor(tf: int, length: int, avgdl: float) -> float:
    return tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avgdl))


@dataclass(frozen=True, slots=True)
class _Query:
    weights: dict[str, float]  # known terms only: idf × query weight
    total: float
    avgdl: float


@dataclass(frozen=True, slots=True)
class _Scored:
    message: Message
    score: float
    raw: float
    matched: frozenset[str]

    @property
    def key(self) -> tuple[float, float, int]:
        return (self.score, self.raw, self.message.seq)


def score_analysis(query: _Query, doc: Analysis) -> tuple[float, float, frozenset[str]]:
    """(score 0..1, uncapped score, matched terms) of one analysed message."""
    if query.total <= 0:
        return 0.0, 0.0, frozenset()
    capped = raw = 0.0
    matched = []
    for term, w in query.weights.items():
        tf = doc.counts.get(term, 0)
        if tf:
            factor = tf_factor(tf, doc.length, query.avgdl)
            capped += w * min(1.0, factor)
            raw += w * factor
            matched.append(term)
    return min(1.0, capped / query.total), raw / query.total, frozenset(matched)


def _history_dfs(expanded: list[str], postings: list[list[int]], dfs: dict[str, int],
                 before_seq: int) -> dict[str, int]:
    """Document frequencies in the history before `before_seq`: the question itself (stored
    before its prompt is built) and anything later must not make a term look known."""
    history = dict(dfs)
    for term, seqs in zip(expanded, postings, strict=True):
        history[term] -= sum(1 for s in seqs if s >= before_seq)
    return history


def _expanded(query_weights: dict[str, float], dfs: dict[str, int], n: int,
              config: SearchConfig) -> list[str]:
    # Rare terms first: they carry the most weight and have the shortest postings.
    present = [t for t in query_weights if dfs[t] > 0]
    present.sort(key=lambda t: idf(dfs[t], n) * query_weights[t], reverse=True)
    return present[: config.max_expanded_terms]


def _candidates(*, expanded: list[str], postings: list[list[int]], weights: dict[str, float],
                before_seq: int) -> dict[int, float]:
    partial: dict[int, float] = {}
    for term, seqs in zip(expanded, postings, strict=True):
        w = weights.get(term)
        if w is None:
            continue
        for seq in set(seqs):
            if seq < before_seq:
                partial[seq] = partial.get(seq, 0.0) + w
    return partial


def _shortlist(*, partial: dict[int, float], slack: float, query: _Query, floor: float,
               config: SearchConfig) -> list[int]:
    # `slack` is the weight a candidate might still gain from terms whose postings were
    # capped or not read: anyone below the floor even with it is skipped unfetched.
    # The epsilon absorbs float summation order: a full match must not fall just short.
    possible = [s for s, p in partial.items() if (p + slack) / query.total + 1e-9 >= floor]
    possible.sort(key=lambda s: (partial[s], s), reverse=True)
    return possible[: config.max_candidates]


def _same_subject(a: _Scored, b: _Scored, weights: dict[str, float], bar: float) -> bool:
    """Weighted Jaccard of the query terms the two messages match >= bar."""
    if a.matched.isdisjoint(b.matched):
        return False
    shared = sum(weights[t] for t in a.matched & b.matched)
    return shared / sum(weights[t] for t in a.matched | b.matched) >= bar


def newer_first_on_same_subject(ranked: list[_Scored], weights: dict[str, float],
                                bar: float) -> list[ScoredMessage]:
    """Rank a newer message just above an older one on the same subject (best first in,
    best first out): what replaced a fact is never ranked below it, and the older one is
    marked `superseded_by` the newer."""
    keys = [s.key for s in ranked]
    superseded: dict[int, int] = {}
    for i, older in enumerate(ranked):
        for j in range(i + 1, len(ranked)):  # only those ranked below `older` can move up
            newer = ranked[j]
            if (newer.message.seq > older.message.seq and keys[j] < keys[i]
                    and _same_subject(newer, older, weights, bar)):
                keys[j] = (keys[i][0], keys[i][1], newer.message.seq)
                superseded.setdefault(older.message.seq, newer.message.seq)
    order = sorted(range(len(ranked)), key=lambda n: keys[n], reverse=True)
    return [ScoredMessage(ranked[n].message, ranked[n].score,
                          superseded.get(ranked[n].message.seq)) for n in order]


def _query(reader: IndexReader, query: str, before_seq: int,
           config: SearchConfig) -> tuple[_Query, list[str], list[list[int]], float] | None:
    asked = analyse(query).weights
    query_terms = list(asked)[: config.max_query_terms]
    if not query_terms:
        return None
    stats = reader.doc_stats(query_terms)
    if stats.docs == 0:
        return None
    dfs = dict(zip(query_terms, stats.dfs, strict=True))
    expanded = _expanded(asked, dfs, stats.docs, config)
    postings = reader.postings(expanded, limit=config.postings_cap)
    history = _history_dfs(expanded, postings, dfs, before_seq)
    weights = {t: idf(history[t], stats.docs) * asked[t] for t in query_terms if history[t] > 0}
    full = {t for t, seqs in zip(expanded, postings, strict=True) if dfs[t] <= len(seqs)}
    slack = sum(w for t, w in weights.items() if t not in full)
    built = _Query(weights=weights, total=sum(weights.values()), avgdl=stats.avgdl)
    return built, expanded, postings, slack


def search_index(
    reader: IndexReader, *, query: str, before_seq: int, limit: int, threshold: float,
    config: SearchConfig = DEFAULT_SEARCH,
) -> list[ScoredMessage]:
    """Messages with seq < before_seq scoring >= threshold, best first (newer first on the
    same subject; ties: newest first)."""
    prepared = _query(reader, query, before_seq, config) if limit > 0 else None
    if prepared is None or prepared[0].total <= 0:
        return []
    q, expanded, postings, slack = prepared
    partial = _candidates(expanded=expanded, postings=postings, weights=q.weights,
                          before_seq=before_seq)
    seqs = _shortlist(partial=partial, slack=slack, query=q, floor=threshold, config=config)
    scored = []
    for message, doc in reader.fetch(seqs):
        score, raw, matched = score_analysis(q, doc)
        if score >= threshold and message.seq < before_seq:
            scored.append(_Scored(message, score, raw, matched))
    scored.sort(key=lambda s: s.key, reverse=True)
    ranked = newer_first_on_same_subject(scored, q.weights, config.same_subject)
    logger.debug("search: %d known terms, %d candidates, %d fetched, %d kept",
                 len(q.weights), len(partial), len(seqs), len(ranked))
    return ranked[:limit]
