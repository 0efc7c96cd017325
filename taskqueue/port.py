"""`core.ports.Broker` on Celery: the one place that names tasks and builds their arguments."""

from __future__ import annotations

from celery import Celery

from core.ports import CHAT_TASK, EMBED_TASK, SUMMARY_TASK


class CeleryBroker:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish_chat(self, job_id: str) -> None:
        self.app.send_task(CHAT_TASK, args=[job_id], task_id=job_id)

    def stop_chat(self, job_id: str) -> None:
        # SIGTERM, not SIGKILL: the child's handler ends the stream and the pool forks anew.
        self.app.control.revoke(job_id, terminate=True, signal="SIGTERM")

    def request_summary(self, conversation_id: str, *, token: str) -> None:
        self.app.send_task(SUMMARY_TASK, kwargs={"conversation_id": conversation_id,
                                                 "token": token})

    def request_embedding(self, conversation_id: str, *, token: str = "",
                          after_seq: int | None = None) -> None:
        self.app.send_task(EMBED_TASK, kwargs={"conversation_id": conversation_id,
                                               "token": token, "after_seq": after_seq})
