"""Running-summary policy (pure): what to fold next, the prompt, the cap on the result.

The Celery task owns the Gemini call; it does, in effect::

    batch = plan_summary(store=store, conversation_id=cid)
    if batch is not None:
        store.set_summary(cid, batch.finish(gemini(batch.prompt)))

Each run folds one bounded batch of messages that have left the recent window into the
previous summary, so the cost of a run never depends on the history length; a backlog
(an imported history) is caught up by successive runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from context.builder import ROLE_LABELS, preserved_window, recent_fetch_limit
from context.store import HistoryStore
from context.tokens import count_tokens, truncate_to_tokens
from context.types import Message, Summary

logger = logging.getLogger(__name__)

DEFAULT_SUMMARY_MAX_TOKENS = 600
DEFAULT_BATCH_MESSAGES = 40
DEFAULT_BATCH_TOKENS = 3000

_PROMPT = """あなたは会話の記録係です。「これまでの要約」に「新しいやりとり」の内容を加えて、\
一つの新しい要約を書いてください。
- 人名・日付・数字・約束・好み・予定などの事実は、古いものも新しいものも必ず残すこと
- 重要でない雑談や挨拶は省くこと
- {max_tokens}トークン以内（日本語でおよそ{max_chars}文字以内）に収めること
- 要約の本文だけを出力すること

## これまでの要約
{previous}

## 新しいやりとり
{turns}
"""


@dataclass(frozen=True, slots=True)
class SummaryBatch:
    """One fold step: the previous summary, the next messages, and the prompt for them."""

    previous: Summary | None
    messages: list[Message]
    prompt: str
    max_summary_tokens: int

    @property
    def covers_up_to_seq(self) -> int:
        return self.messages[-1].seq

    def finish(self, model_text: str) -> Summary:
        return finalize_summary(text=model_text, covers_up_to_seq=self.covers_up_to_seq,
                                max_tokens=self.max_summary_tokens)


def finalize_summary(*, text: str, covers_up_to_seq: int, max_tokens: int) -> Summary:
    """The model's summary, cut to max_tokens if it ran over, with its token count."""
    capped = truncate_to_tokens(text.strip(), max_tokens)
    if capped != text.strip():
        logger.info("summary up to seq %s cut to %d tokens", covers_up_to_seq, max_tokens)
    return Summary(text=capped, covers_up_to_seq=covers_up_to_seq, tokens=count_tokens(capped))


def summary_prompt(
    *, previous: Summary | None, messages: list[Message],
    max_summary_tokens: int = DEFAULT_SUMMARY_MAX_TOKENS,
) -> str:
    turns = "\n".join(ROLE_LABELS[m.role] + m.text for m in messages)
    return _PROMPT.format(max_tokens=max_summary_tokens,
                          max_chars=max_summary_tokens,  # ~1 token per Japanese character
                          previous=previous.text if previous else "（まだありません）",
                          turns=turns)


def _bounded(messages: list[Message], *, max_tokens: int) -> list[Message]:
    """Oldest first while they fit in max_tokens; always at least one (cut if too long)."""
    kept: list[Message] = []
    used = 0
    for message in messages:
        if kept and used + message.tokens > max_tokens:
            break
        if message.tokens > max_tokens:
            text = truncate_to_tokens(message.text, max_tokens)
            message = Message(seq=message.seq, role=message.role, text=text,
                              tokens=count_tokens(text), created_at=message.created_at,
                              job_id=message.job_id)
        kept.append(message)
        used += message.tokens
    return kept


def pending_messages(
    *, store: HistoryStore, conversation_id: str, after_seq: int,
    preserve_recent: int = 3, max_messages: int = DEFAULT_BATCH_MESSAGES,
    max_tokens: int = DEFAULT_BATCH_TOKENS,
) -> list[Message]:
    """Messages with seq > after_seq that have left the recent window (bounded, oldest first)."""
    latest = store.last(conversation_id, limit=recent_fetch_limit(preserve_recent))
    window = preserved_window(latest, preserve_recent=preserve_recent)
    if not latest or (preserve_recent > 0 and not window):
        return []
    boundary = window[0].seq if window else latest[-1].seq + 1
    fallen = store.between(conversation_id, after_seq=after_seq, before_seq=boundary,
                           limit=max_messages)
    return _bounded(fallen, max_tokens=max_tokens)


def plan_summary(
    *, store: HistoryStore, conversation_id: str, preserve_recent: int = 3,
    max_messages: int = DEFAULT_BATCH_MESSAGES, max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_summary_tokens: int = DEFAULT_SUMMARY_MAX_TOKENS,
) -> SummaryBatch | None:
    """The next fold step, or None when every message outside the recent window is covered."""
    previous = store.get_summary(conversation_id)
    after = previous.covers_up_to_seq if previous else -(2**62)
    messages = pending_messages(store=store, conversation_id=conversation_id, after_seq=after,
                                preserve_recent=preserve_recent, max_messages=max_messages,
                                max_tokens=max_batch_tokens)
    if not messages:
        return None
    prompt = summary_prompt(previous=previous, messages=messages,
                            max_summary_tokens=max_summary_tokens)
    return SummaryBatch(previous=previous, messages=messages, prompt=prompt,
                        max_summary_tokens=max_summary_tokens)
