"""The job record in Redis: the one truth about a prompt's progress, apart from Celery's meta.

Every write is a read-modify-write under WATCH, so the API (cancel), the worker's child
(steps, streamed text), the worker's parent (hard limit, lost child) and the reaper can
all touch a job without losing each other's updates. Writes meant for a running job are
dropped once the job is final: a cancelled or timed-out job never comes back to life.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import redis
from redis.client import Pipeline

from mysisterdb import keys
from mysisterdb.errors import NotFound
from mysisterdb.incidents import IncidentLog, is_incident
from mysisterdb.metrics import MetricsRecorder
from mysisterdb.models import (
    ErrorCode,
    Job,
    JobError,
    JobStatus,
    StepStatus,
    utcnow,
)

logger = logging.getLogger(__name__)

Mutation = Callable[[Job], None]


class JobStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def create(self, job: Job, *, pipe: Pipeline | None = None) -> None:
        target = pipe if pipe is not None else self._redis
        target.set(keys.job(job.id), job.model_dump_json(), ex=keys.job_ttl_s)
        target.hset(keys.conv_jobs(job.conversation_id), str(job.turn), job.id)
        target.sadd(keys.active_jobs(), job.id)

    def active_ids(self) -> list[str]:
        return sorted(v.decode() if isinstance(v, bytes) else v
                      for v in self._redis.smembers(keys.active_jobs()))

    def active(self) -> list[Job]:
        """Queued and running jobs (ids whose record expired are dropped from the set)."""
        found: list[Job] = []
        for job_id in self.active_ids():
            job = self.find(job_id)
            if job is None or job.status.is_final:
                self._redis.srem(keys.active_jobs(), job_id)
            else:
                found.append(job)
        return found

    def job_id_for_turn(self, conversation_id: str, turn: int) -> str | None:
        raw = self._redis.hget(keys.conv_jobs(conversation_id), str(turn))
        return raw.decode() if isinstance(raw, bytes) else raw

    def find(self, job_id: str) -> Job | None:
        raw = self._redis.get(keys.job(job_id))
        return Job.model_validate_json(raw) if raw else None

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound("指定されたジョブは見つかりませんでした。")
        return job

    def update(self, job_id: str, mutate: Mutation, *, only_active: bool = True) -> Job | None:
        """Apply `mutate` atomically; None when the job is gone or (only_active) already final."""
        key = keys.job(job_id)
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if not raw:
                        return None
                    job = Job.model_validate_json(raw)
                    if only_active and job.status.is_final:
                        return None
                    mutate(job)
                    pipe.multi()
                    pipe.set(key, job.model_dump_json(), keepttl=True)
                    if job.status.is_final:
                        pipe.srem(keys.active_jobs(), job_id)
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def finalize(
        self, job_id: str, *, status: JobStatus, error: JobError | None = None,
        reply: str | None = None, extra: Mutation | None = None,
    ) -> Job | None:
        """Move a still-active job to a final status; None if it was already final."""

        def mutate(job: Job) -> None:
            close_job(job, status=status, error=error, reply=reply)
            if extra:
                extra(job)

        job = self.update(job_id, mutate)
        if job:
            logger.info("job %s %s%s", job_id, status.value,
                        f" ({error.code})" if error else "")
            record_final(MetricsRecorder(self._redis), job)
        return job

    def stale_deadline_passed(self, job: Job, *, hard_limit_s: float, grace_s: float) -> bool:
        """True when a running job has outlived the hard limit: its process is surely gone."""
        if job.status is not JobStatus.IN_PROGRESS or job.started_at is None:
            return False
        return utcnow() - job.started_at > timedelta(seconds=hard_limit_s + grace_s)


def close_job(job: Job, *, status: JobStatus, error: JobError | None, reply: str | None) -> None:
    now = utcnow()
    job.status = status
    job.error = error
    if reply is not None:
        job.reply = reply
    job.completed_at = now
    for step in job.steps:
        if step.status is StepStatus.IN_PROGRESS:
            step.status = StepStatus.COMPLETED if status is JobStatus.COMPLETED else StepStatus.FAILED
            step.completed_at = now
        elif step.status is StepStatus.PENDING:
            step.status = StepStatus.SKIPPED


def fail_job(jobs: JobStore, job_id: str, *, code: ErrorCode, message: str, exception: str,
             action: str, partial_ok: bool = True) -> Job | None:
    """End a job that stopped: `incomplete` if text was generated, else `failed`.

    Time limits, lost workers and LLM failures also go into the incident table.
    """
    current = jobs.find(job_id)
    status = JobStatus.FAILED
    if partial_ok and current is not None and current.partial_reply:
        status = JobStatus.INCOMPLETE
    ended = jobs.finalize(job_id, status=status, error=JobError(code=code.value, message=message))
    if ended is not None and is_incident(ended):
        IncidentLog(jobs.redis).record_job(ended, exception=exception, action=action)
    return ended


def record_final(metrics: MetricsRecorder, job: Job) -> None:
    metrics.count("jobs", job.status.value, job.error.code if job.error else "")
    if job.completed_at is None:
        return
    metrics.observe("job_duration", (job.completed_at - job.created_at).total_seconds())
    if job.started_at is not None:
        metrics.observe("celery_task_runtime",
                        (job.completed_at - job.started_at).total_seconds(), "mysisterdb.chat")
