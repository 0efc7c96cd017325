"""Bounded prompt context for MySisterDB: token budget, recent turns, recall, summaries.

A pure library: no Celery, no FastAPI.  See docs/context.md.  Semantic recall
(`context.vectors`: RedisVectorStore, SemanticSource) is imported from its module, not
here: it needs numpy, which the API process never loads.
"""

from __future__ import annotations

from context.builder import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PRESERVE_RECENT,
    DEFAULT_RELEVANCE_FLOOR,
    DEFAULT_RELEVANCE_THRESHOLD,
    BuiltContext,
    MessageTooLargeError,
    build_context,
    max_message_tokens,
    message_fits,
    persona_tokens,
)
from context.fusion import CandidateSource, reciprocal_rank_fusion
from context.memory_store import InMemoryHistoryStore
from context.redis_store import IndexCheck, KeyOf, RedisHistoryStore
from context.relevance import SearchConfig
from context.store import HistoryStore
from context.summary import SummaryBatch, finalize_summary, plan_summary, summary_prompt
from context.terms import analyse, warm_up
from context.tokens import count_tokens, truncate_to_tokens
from context.types import Message, ScoredMessage, Summary, Turn

__all__ = [
    "DEFAULT_MAX_TOKENS", "DEFAULT_PRESERVE_RECENT", "DEFAULT_RELEVANCE_FLOOR",
    "DEFAULT_RELEVANCE_THRESHOLD", "BuiltContext", "CandidateSource", "HistoryStore",
    "InMemoryHistoryStore", "IndexCheck", "KeyOf", "Message", "MessageTooLargeError",
    "RedisHistoryStore", "ScoredMessage", "SearchConfig", "Summary", "SummaryBatch", "Turn",
    "analyse", "build_context", "count_tokens", "finalize_summary", "max_message_tokens",
    "message_fits", "persona_tokens", "plan_summary", "reciprocal_rank_fusion",
    "summary_prompt", "truncate_to_tokens", "warm_up",
]
