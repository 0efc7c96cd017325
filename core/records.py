"""Small writes and reads every transaction of the lifecycle shares: a conversation's last
activity, its owner, the final figures of a job."""

from __future__ import annotations

import time

from redis.client import Pipeline

from core import keys
from core.access import OWNER
from core.metrics import MetricsRecorder
from core.models import Job, StepStatus
from core.redis_client import to_str


def touch(pipe: Pipeline, conversation_id: str, owner: str) -> None:
    """The conversation's last activity (inside MULTI), in whole milliseconds (the list's
    `before` cursor is an ISO time with milliseconds): never moves back. In the list of
    everyone's (operators) and of its owner's."""
    now = round(time.time(), 3)
    pipe.zadd(keys.conversations_by_activity(), {conversation_id: now}, gt=True)
    pipe.zadd(keys.person_conversations(owner), {conversation_id: now}, gt=True)


def owned_by(job: Job, person: str) -> bool:
    return (job.owner or OWNER) == person


def stored_owner(raw: bytes | str | None, *, existed: bool) -> str | None:
    """The owner from its key; a conversation from before owners were stored is OWNER's."""
    if raw is not None:
        return to_str(raw)
    return OWNER if existed else None


def record_final(metrics: MetricsRecorder, job: Job, *, pipe: Pipeline,
                 done_before: set[str] | None = None) -> None:
    """The end's figures, in its transaction: the job's count and times, and the duration of
    each step this end completed (those not in `done_before`: the last step and the save)."""
    metrics.count("jobs", job.status.value, job.error.code.value if job.error else "", pipe=pipe)
    for step in job.steps:
        if (done_before is not None and step.status is StepStatus.COMPLETED
                and step.name not in done_before and step.started_at and step.completed_at):
            metrics.observe("step_duration",
                            (step.completed_at - step.started_at).total_seconds(), step.name,
                            pipe=pipe)
    if job.completed_at is None:
        return
    metrics.observe("job_duration", (job.completed_at - job.created_at).total_seconds(),
                    pipe=pipe)
    if job.started_at is not None:
        metrics.observe("celery_task_runtime",
                        (job.completed_at - job.started_at).total_seconds(), "mysisterdb.chat",
                        pipe=pipe)
