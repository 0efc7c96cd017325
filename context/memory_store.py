"""In-process HistoryStore for unit tests; same index and scoring as the Redis store."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from context.relevance import DEFAULT_SEARCH, IndexStats, SearchConfig, search_index
from context.terms import Analysis, analyse
from context.types import Message, ScoredMessage, Summary

logger = logging.getLogger(__name__)


@dataclass
class _Conversation:
    seqs: list[int] = field(default_factory=list)
    by_seq: dict[int, Message] = field(default_factory=dict)
    analyses: dict[int, Analysis] = field(default_factory=dict)
    postings: dict[str, list[int]] = field(default_factory=dict)
    words: int = 0
    summary: Summary | None = None


@dataclass
class _Reader:
    conv: _Conversation

    def doc_stats(self, terms: Sequence[str]) -> IndexStats:
        return IndexStats(docs=len(self.conv.seqs), words=self.conv.words,
                          dfs=[len(self.conv.postings.get(t, ())) for t in terms])

    def postings(self, terms: Sequence[str], *, limit: int) -> list[list[int]]:
        return [self.conv.postings.get(t, [])[-limit:] for t in terms]

    def fetch(self, seqs: Sequence[int]) -> list[tuple[Message, Analysis]]:
        return [(self.conv.by_seq[s], self.conv.analyses[s]) for s in seqs
                if s in self.conv.by_seq]


class InMemoryHistoryStore:
    """Dict-backed store; not thread-safe (tests only)."""

    def __init__(self) -> None:
        self._convs: dict[str, _Conversation] = {}

    def _conv(self, conversation_id: str) -> _Conversation:
        return self._convs.setdefault(conversation_id, _Conversation())

    def append(self, conversation_id: str, message: Message) -> None:
        conv = self._conv(conversation_id)
        if message.seq in conv.by_seq:
            return
        bisect.insort(conv.seqs, message.seq)
        self._index(conv, message)

    @staticmethod
    def _index(conv: _Conversation, message: Message) -> None:
        conv.by_seq[message.seq] = message
        analysis = analyse(message.text)
        conv.analyses[message.seq] = analysis
        conv.words += analysis.length
        for term in analysis.weights:
            conv.postings.setdefault(term, []).append(message.seq)

    @staticmethod
    def _unindex(conv: _Conversation, seq: int) -> None:
        analysis = conv.analyses.pop(seq)
        del conv.by_seq[seq]
        conv.words -= analysis.length
        for term in analysis.weights:
            kept = [s for s in conv.postings[term] if s != seq]
            if kept:
                conv.postings[term] = kept
            else:
                del conv.postings[term]

    def replace(self, conversation_id: str, message: Message) -> bool:
        conv = self._conv(conversation_id)
        if message.seq not in conv.by_seq:
            return False
        self._unindex(conv, message.seq)
        self._index(conv, message)
        return True

    def remove(self, conversation_id: str, seq: int) -> bool:
        conv = self._conv(conversation_id)
        if seq not in conv.by_seq:
            return False
        self._unindex(conv, seq)
        conv.seqs.remove(seq)
        return True

    def last(self, conversation_id: str, *, limit: int) -> list[Message]:
        conv = self._conv(conversation_id)
        return [conv.by_seq[s] for s in conv.seqs[-limit:]] if limit > 0 else []

    def before(self, conversation_id: str, *, before_seq: int, limit: int) -> list[Message]:
        conv = self._conv(conversation_id)
        end = bisect.bisect_left(conv.seqs, before_seq)
        start = max(0, end - limit)
        return [conv.by_seq[s] for s in conv.seqs[start:end]] if limit > 0 else []

    def between(
        self, conversation_id: str, *, after_seq: int, before_seq: int, limit: int
    ) -> list[Message]:
        conv = self._conv(conversation_id)
        start = bisect.bisect_right(conv.seqs, after_seq)
        end = bisect.bisect_left(conv.seqs, before_seq)
        return [conv.by_seq[s] for s in conv.seqs[start:min(end, start + max(limit, 0))]]

    def get_many(self, conversation_id: str, seqs: Sequence[int]) -> list[Message]:
        conv = self._conv(conversation_id)
        return [conv.by_seq[s] for s in sorted(set(seqs)) if s in conv.by_seq]

    def search(
        self, conversation_id: str, *, query: str, before_seq: int, limit: int,
        threshold: float, config: SearchConfig | None = None,
    ) -> list[ScoredMessage]:
        return search_index(_Reader(self._conv(conversation_id)), query=query,
                            before_seq=before_seq, limit=limit, threshold=threshold,
                            config=config or DEFAULT_SEARCH)

    def get_summary(self, conversation_id: str) -> Summary | None:
        return self._conv(conversation_id).summary

    def set_summary(self, conversation_id: str, summary: Summary) -> bool:
        conv = self._convs.get(conversation_id)
        if conv is None or not conv.seqs:
            return False
        if conv.summary is not None and conv.summary.covers_up_to_seq >= summary.covers_up_to_seq:
            return False
        conv.summary = summary
        return True

    def reset(self, conversation_id: str) -> None:
        self._convs.pop(conversation_id, None)
