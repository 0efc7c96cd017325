"""Running summaries, off the hot path.

After a chat job completes, one summary task per conversation is queued (a Redis flag
dedupes it). It folds the next bounded batch of turns that left the recent window into the
previous summary through Gemini, under its own time limit. Chat jobs never wait for it;
its failure never fails a chat job: it is retried a few times, and the next completed chat
job queues it again anyway.
"""

from __future__ import annotations

import logging

from context.summary import plan_summary
from context.types import Turn
from core import keys
from taskqueue.app import summary_soft_limit
from workers.once import OncePerConversation
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

SUMMARY_SYSTEM = "あなたは会話の内容を正確に要約する記録係です。"


ONCE = OncePerConversation("summary", lambda b, cid, tok: b.request_summary(cid, token=tok),
                           keys.conv_summarizing,
                           keys.summary_pending_ttl_s)


def request_summary(rt: Runtime, conversation_id: str) -> bool:
    return ONCE.request(rt, conversation_id)


def keep_flag(rt: Runtime, conversation_id: str, token: str) -> None:
    ONCE.keep(rt, conversation_id, token)


def release_flag(rt: Runtime, conversation_id: str, token: str) -> None:
    ONCE.release(rt, conversation_id, token)


def summarize_once(rt: Runtime, conversation_id: str, *, deadline: float) -> bool:
    """Fold one batch; True when more is left to fold."""
    s = rt.settings
    batch = plan_summary(store=rt.history, conversation_id=conversation_id,
                         preserve_recent=s.preserve_recent,
                         max_summary_tokens=s.summary_max_tokens)
    if batch is None:
        return False
    text = rt.llm.stream(system_instruction=SUMMARY_SYSTEM,
                         contents=[Turn(role="user", text=batch.prompt)],
                         deadline=deadline, on_text=lambda _piece: None)
    summary = batch.finish(text)
    rt.history.set_summary(conversation_id, summary)
    logger.info("summary of %s now covers up to seq %d (%d tokens)", conversation_id,
                summary.covers_up_to_seq, summary.tokens)
    return plan_summary(store=rt.history, conversation_id=conversation_id,
                        preserve_recent=s.preserve_recent) is not None


def summary_deadline(rt: Runtime, started: float) -> float:
    return started + summary_soft_limit(rt.settings.summary_time_limit) - 0.5
