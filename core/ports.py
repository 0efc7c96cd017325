"""The broker port: everything the core asks of the task queue, as typed functions.

The core decides *what* runs (the lifecycle puts a job in the outbox, ends it, asks for a
summary); an adapter decides *how* it reaches a worker. The only adapter is Celery's
(`taskqueue.port.CeleryBroker`); tests pass their own. No module outside `taskqueue/` names a
Celery task or builds its arguments: adding a background task means a method here, one there.
"""

from __future__ import annotations

from typing import Protocol

CHAT_QUEUE = "chat"
SUMMARY_QUEUE = "summary"
QUEUES = (CHAT_QUEUE, SUMMARY_QUEUE)
CHAT_TASK = "mysisterdb.chat"
SUMMARY_TASK = "mysisterdb.summarize"
EMBED_TASK = "mysisterdb.embed"  # on the summary queue: background work beside summaries


class Broker(Protocol):
    def publish_chat(self, job_id: str) -> None:
        """Send the job's prompt to the chat queue (task id = job id: a second copy is
        recognised by the claim). Raises when the broker cannot take it."""

    def stop_chat(self, job_id: str) -> None:
        """Terminate the running prompt's task on whichever worker runs it (best effort:
        the job has already ended in Redis, so its next write finds it over)."""

    def request_summary(self, conversation_id: str, *, token: str) -> None:
        """Queue a summary of the conversation's old stretches (token: its once-flag)."""

    def request_embedding(self, conversation_id: str, *, token: str = "",
                          after_seq: int | None = None) -> None:
        """Queue the embedding of messages without a vector (from `after_seq`, 0 for a
        backfill from the start)."""
