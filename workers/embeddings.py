"""Embeddings of stored messages, off the hot path, and the query's, on it within a small budget.

When embeddings are on (`Settings.embeddings_enabled`, docs/context.md "Meaning"):

* after a chat job completes, one embedding task per conversation is queued on the summary
  queue (a Redis flag dedupes it, as for summaries).  It embeds the messages of the last
  `TAIL_WINDOW` that have no vector yet, in one batch request, under its own time limit.  It
  is not retried by Celery: the client already retries each request a bounded number of
  times, and the next completed chat job queues a task that catches up the same window.
  Its failure never touches the chat job, which completed before it was queued.
* `mysisterdb reindex --embeddings` queues one backfill task per conversation: it embeds the
  next `BACKFILL_BATCH` stored messages from a seq on and queues itself for the rest.
* while a prompt is built, the question is embedded with `embedding_query_timeout_s` as its
  whole budget (retries included); on failure or timeout recall is lexical only, and the
  reason is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from context.tokens import truncate_to_tokens
from context.types import Message
from context.vectors import QueryEmbedder, SemanticSource
from core import keys
from core.errors import LLMError
from taskqueue.app import summary_soft_limit
from workers.once import OncePerConversation
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

TAIL_WINDOW = 40  # messages a tail task looks at: a few turns, plus slack for missed ones
BACKFILL_BATCH = 100  # messages per backfill task: one batchEmbedContents request
# Gemini's embedding models take 2,048 tokens; our counter is cl100k, so keep a margin.
MAX_EMBED_TOKENS = 1500
DOCUMENT_TASK = "RETRIEVAL_DOCUMENT"
QUERY_TASK = "RETRIEVAL_QUERY"


ONCE = OncePerConversation("embedding",
                           lambda b, cid, tok: b.request_embedding(cid, token=tok),
                           keys.conv_embedding,
                           keys.embedding_pending_ttl_s)


def request_embedding(rt: Runtime, conversation_id: str) -> bool:
    return ONCE.request(rt, conversation_id)


def request_backfill(rt: Runtime, conversation_id: str, *, after_seq: int) -> None:
    """Queue the backfill of a conversation's messages with seq > after_seq."""
    if rt.lifecycle.broker is not None:
        rt.lifecycle.broker.request_embedding(conversation_id, after_seq=after_seq)


def release_flag(rt: Runtime, conversation_id: str, token: str) -> None:
    ONCE.release(rt, conversation_id, token)


def embed_messages(rt: Runtime, conversation_id: str, messages: Sequence[Message], *,
                   deadline: float) -> int:
    """Embed and store those of `messages` that have no vector yet; returns how many were
    stored.  LLMError when the request failed (after the client's own retries)."""
    if not messages:
        return 0
    have = rt.vectors.embedded_seqs(conversation_id, after_seq=messages[0].seq - 1,
                                    before_seq=messages[-1].seq + 1)
    missing = [m for m in messages if m.seq not in have and m.text.strip()]
    if not missing:
        return 0
    texts = [truncate_to_tokens(m.text, MAX_EMBED_TOKENS) for m in missing]
    vectors = rt.llm.embed(texts, task=DOCUMENT_TASK, deadline=deadline)
    return rt.vectors.store(conversation_id, zip((m.seq for m in missing), vectors, strict=True))


def embed_tail(rt: Runtime, conversation_id: str, *, deadline: float) -> int:
    messages = rt.history.last(conversation_id, limit=TAIL_WINDOW)
    return embed_messages(rt, conversation_id, messages, deadline=deadline)


def tail_missing(rt: Runtime, conversation_id: str) -> bool:
    """Is any message of the tail window still without a vector?"""
    messages = rt.history.last(conversation_id, limit=TAIL_WINDOW)
    if not messages:
        return False
    have = rt.vectors.embedded_seqs(conversation_id, after_seq=messages[0].seq - 1,
                                    before_seq=messages[-1].seq + 1)
    return any(m.seq not in have and m.text.strip() for m in messages)


def backfill_batch(rt: Runtime, conversation_id: str, *, after_seq: int,
                   deadline: float) -> tuple[int, int | None]:
    """Embed the next BACKFILL_BATCH stored messages after `after_seq`: (stored, the seq to go
    on from, or None when this was the last batch)."""
    messages = rt.history.between(conversation_id, after_seq=after_seq, before_seq=2 ** 62,
                                  limit=BACKFILL_BATCH)
    stored = embed_messages(rt, conversation_id, messages, deadline=deadline)
    more = len(messages) == BACKFILL_BATCH
    return stored, messages[-1].seq if more else None


def task_deadline(rt: Runtime, started: float) -> float:
    return started + summary_soft_limit(rt.settings.embedding_time_limit) - 0.5


def query_embedder(rt: Runtime) -> QueryEmbedder:
    """The question's embedding within the reply path's small budget, or None (logged)."""
    budget_s = rt.settings.embedding_query_timeout_s

    def embed(text: str) -> list[float] | None:
        started = time.monotonic()
        try:
            return rt.llm.embed([truncate_to_tokens(text, MAX_EMBED_TOKENS)], task=QUERY_TASK,
                                deadline=started + budget_s)[0]
        except LLMError as exc:
            logger.warning("query embedding failed after %.2f s (budget %.2f s): %s %s; "
                           "recall is lexical only for this prompt", time.monotonic() - started,
                           budget_s, type(exc).__name__, exc.code)
            return None

    return embed


def semantic_source(rt: Runtime) -> SemanticSource | None:
    """The semantic CandidateSource of one build, or None when embeddings are off."""
    s = rt.settings
    if not s.embeddings_enabled:
        return None
    return SemanticSource(vectors=rt.vectors, history=rt.history, embed_query=query_embedder(rt),
                          scan_max=s.embedding_scan_max,
                          min_similarity=s.embedding_min_similarity)
