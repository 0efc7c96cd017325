"""Running-summary policy (pure): what to fold next, the prompt, the cap on the result.

The Celery task owns the Gemini call; it does, in effect::

    batch = plan_summary(store=store, conversation_id=cid)
    if batch is not None:
        store.set_summary(cid, batch.finish(gemini(batch.prompt)))

Each run folds one bounded batch of messages that have left the recent window into the
previous summary, so the cost of a run never depends on the history length; a backlog
(an imported history) is caught up by successive runs.

The summary is a list of durable facts (names, dates, places, numbers, preferences; a
changed fact rewritten, not added) followed by a short narrative.  Each run hands the list
back to the model with the instruction to carry every line over, so facts survive summaries
of summaries; the list comes first, so a cut to the cap shortens the narrative.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from context.builder import ROLE_LABELS, HistoryTail, preserved_window, recent_fetch_limit
from context.store import HistoryStore
from context.tokens import count_tokens, truncate_to_tokens
from context.types import Message, Summary

logger = logging.getLogger(__name__)

DEFAULT_SUMMARY_MAX_TOKENS = 600
DEFAULT_BATCH_MESSAGES = 40
DEFAULT_BATCH_TOKENS = 3000

FACTS_HEADER = "## 覚えておく事実"
FLOW_HEADER = "## 会話の流れ"

# The facts come first: a summary cut to its cap loses the end, i.e. the narrative, and a
# fact list handed back every time is what survives summaries of summaries.
_PROMPT = """あなたは会話の記録係です。「これまでの要約」に「新しいやりとり」の内容を加えて、\
一つの新しい要約を次の形で書いてください。

{facts_header}
- 長く覚えておくべき事実を、一行に一つ、「誰/何: 事実」の短い形で箇条書きにする
  （人名・続柄、日付・時刻・曜日、場所、数字・番号・金額、好き嫌い、約束・予定）
- これまでの要約の事実は、一つも落とさずに引き継ぐこと
- 新しいやりとりで事実が変わったら（予定の変更、番号の変更、引っ越しなど）、古い行を新しい内容に
  書き換えること（古い値は残さない）
- 同じ事実を二度書かないこと

{flow_header}
- 最近の話題と流れを二、三文で（雑談や挨拶は省く）

全体を{max_tokens}トークン以内（日本語でおよそ{max_chars}文字以内）に収めること。\
収まらないときは「{flow_header}」を短くし、事実は削らないこと。要約の本文だけを出力すること。

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
    """The model's summary, cut to max_tokens if it ran over (at a line end, so no fact is
    left half written; the facts come first, so the narrative goes first), with its count."""
    whole = text.strip()
    capped = truncate_to_tokens(whole, max_tokens)
    if capped != whole:
        if "\n" in capped:
            capped = capped[: capped.rindex("\n")].rstrip()
        logger.info("summary up to seq %s cut to %d tokens", covers_up_to_seq, max_tokens)
    return Summary(text=capped, covers_up_to_seq=covers_up_to_seq, tokens=count_tokens(capped))


def summary_prompt(
    *, previous: Summary | None, messages: list[Message],
    max_summary_tokens: int = DEFAULT_SUMMARY_MAX_TOKENS,
) -> str:
    turns = "\n".join(ROLE_LABELS[m.role] + m.text for m in messages)
    return _PROMPT.format(max_tokens=max_summary_tokens,
                          max_chars=max_summary_tokens,  # ~1 token per Japanese character
                          facts_header=FACTS_HEADER, flow_header=FLOW_HEADER,
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


def fold_due(tail: HistoryTail | None, *, stored: Sequence[Message],
             preserve_recent: int = 3) -> bool:
    """Whether a fold (`plan_summary`) would find work once `stored` (the new message and its
    reply) follow `tail` (what the prompt's build read): a message outside the recent window
    that the summary does not cover. Decided from what the build read, without reading the
    history again; where that cannot tell (messages older than it read), it says yes, so a
    summary is never missed, only sometimes queued for nothing. Messages stored after
    `stored` (later turns, already submitted) are not seen here: the caller asks for them
    (workers/pipeline.py `later_turns`)."""
    if tail is None:
        return True
    after = tail.summary_covers if tail.summary_covers is not None else -(2**62)
    latest = [*tail.messages, *stored][-recent_fetch_limit(preserve_recent):]
    window = preserved_window(latest, preserve_recent=preserve_recent)
    if not latest or (preserve_recent > 0 and not window):
        return False
    boundary = window[0].seq if window else latest[-1].seq + 1
    if any(after < m.seq < boundary for m in [*tail.messages, *stored]):
        return True
    older_unread = not tail.complete and (not tail.messages or tail.messages[0].seq - 1 > after)
    return older_unread


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
