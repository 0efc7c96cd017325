"""The job record in Redis: the one truth about a prompt's progress, apart from Celery's meta.

Every write is a read-modify-write under WATCH, so the API (cancel), the worker's child
(steps, streamed text), the worker's parent (hard limit, lost child) and the reapers can
all touch a job without losing each other's updates. Writes meant for a running job are
dropped once the job is final: a cancelled or timed-out job never comes back to life.

The indexes that follow a job's status (active and running sets, the conversation's active
turns), its metrics and its incident are written in the same transaction as the status,
so nobody ever sees a final job without them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from redis.client import Pipeline

from mysisterdb import keys
from mysisterdb.errors import NotFound
from mysisterdb.incidents import IncidentLog, is_incident
from mysisterdb.metrics import MetricsRecorder
from mysisterdb.models import ErrorCode, Job, JobError, JobStatus, StepStatus, utcnow
from mysisterdb.redis_client import MAX_TRANSACTION_ATTEMPTS, TransactionFailed, lost_connection

logger = logging.getLogger(__name__)

Mutation = Callable[[Job], None]
AfterWrite = Callable[[Pipeline, Job], object]  # more commands for the same transaction


class Skip(Exception):
    """Raised by a mutation to leave the job as it is."""


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
        target.zadd(keys.conv_active(job.conversation_id), {job.id: job.turn})

    def find(self, job_id: str) -> Job | None:
        raw = self._redis.get(keys.job(job_id))
        return Job.model_validate_json(raw) if raw else None

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound("指定されたジョブは見つかりませんでした。")
        return job

    def active_ids(self) -> list[str]:
        return sorted(text(v) for v in self._redis.smembers(keys.active_jobs()))

    def running_count(self) -> int:
        return int(self._redis.scard(keys.running_jobs()))

    def job_id_for_turn(self, conversation_id: str, turn: int) -> str | None:
        raw = self._redis.hget(keys.conv_jobs(conversation_id), str(turn))
        return text(raw) if raw else None

    def first_active_before(self, conversation_id: str, *, turn: int) -> str | None:
        """The conversation's unfinished job with the lowest turn below `turn`."""
        first = self._redis.zrangebyscore(keys.conv_active(conversation_id), "-inf",
                                          f"({turn}", start=0, num=1)
        return text(first[0]) if first else None

    def forget_active(self, conversation_id: str, job_id: str) -> None:
        self._redis.zrem(keys.conv_active(conversation_id), job_id)

    def update(self, job_id: str, mutate: Mutation, *, only_active: bool = True,
               after: AfterWrite | None = None) -> Job | None:
        """Apply `mutate` atomically; None when the job is gone, already final (only_active),
        or the mutation raised Skip.

        Each write stamps the record with a fresh `write_id`: when the connection fails
        around EXEC we cannot know whether it was applied, so we look for our stamp rather
        than apply the change twice.
        """
        key, write_id = keys.job(job_id), uuid.uuid4().hex
        with self._redis.pipeline() as pipe:
            for _ in range(MAX_TRANSACTION_ATTEMPTS):
                try:
                    return self._update_once(pipe, key, mutate, only_active, after, write_id)
                except redis.WatchError as exc:
                    if lost_connection(exc) and (mine := self._written(key, write_id)):
                        return mine
                except Skip:
                    return None
        raise TransactionFailed(f"job {job_id}: no transaction after "
                                f"{MAX_TRANSACTION_ATTEMPTS} attempts")

    def _written(self, key: str, write_id: str) -> Job | None:
        raw = self._redis.get(key)
        job = Job.model_validate_json(raw) if raw else None
        return job if job is not None and job.write_id == write_id else None

    def _update_once(self, pipe: Pipeline, key: str, mutate: Mutation, only_active: bool,
                     after: AfterWrite | None, write_id: str) -> Job | None:
        pipe.watch(key)
        raw = pipe.get(key)
        if not raw:
            return None
        job = Job.model_validate_json(raw)
        if only_active and job.status.is_final:
            return None
        mutate(job)
        job.write_id = write_id
        pipe.multi()
        pipe.set(key, job.model_dump_json(), keepttl=True)
        follow_status(pipe, job)
        if after is not None:
            after(pipe, job)
        pipe.execute()
        return job

    def claim(self, job_id: str) -> Job | None:
        """Start a queued job that never started; None for anything else (a duplicate
        delivery, a cancelled job): a prompt runs at most once."""
        import os

        def start(job: Job) -> None:
            if job.status is not JobStatus.QUEUED or job.attempts > 0:
                raise Skip
            job.status = JobStatus.IN_PROGRESS
            job.attempts += 1
            job.started_at = job.heartbeat_at = utcnow()
            job.worker_pid = os.getpid()

        return self.update(job_id, start, after=lambda pipe, _job: pipe.set(
            keys.last_job_started_at(), str(utcnow().timestamp())))

    def finalize(self, job_id: str, *, status: JobStatus | Callable[[Job], JobStatus],
                 error: JobError | None = None, reply: str | None = None,
                 extra: Mutation | None = None, after: AfterWrite | None = None) -> Job | None:
        """Move a still-active job to a final status (or one chosen from the job as it is,
        inside the transaction); None if it was already final."""
        previous: list[JobStatus] = []

        def mutate(job: Job) -> None:
            previous.append(job.status)
            if extra is not None:
                extra(job)
            final = status(job) if callable(status) else status
            close_job(job, status=final, error=error, reply=reply)

        def also(pipe: Pipeline, job: Job) -> None:
            record_final(MetricsRecorder(self._redis), job, pipe=pipe)
            if after is not None:
                after(pipe, job)

        job = self.update(job_id, mutate, after=also)
        if job:
            logger.info("job %s %s%s (was %s)", job_id, job.status.value,
                        f" ({error.code})" if error else "", previous[-1].value)
            job.previous_status = previous[-1]
        return job

    def stale_deadline_passed(self, job: Job, *, hard_limit_s: float, grace_s: float) -> bool:
        """True when a running job has outlived the hard limit: its process is surely gone."""
        if job.status is not JobStatus.IN_PROGRESS or job.started_at is None:
            return False
        return utcnow() - job.started_at > timedelta(seconds=hard_limit_s + grace_s)


def text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def follow_status(pipe: Pipeline, job: Job) -> None:
    """Keep the status indexes in step with the record, in the same transaction."""
    if job.status is JobStatus.IN_PROGRESS:
        pipe.sadd(keys.running_jobs(), job.id)
    if job.status.is_final:
        pipe.srem(keys.active_jobs(), job.id)
        pipe.srem(keys.running_jobs(), job.id)
        pipe.zrem(keys.conv_active(job.conversation_id), job.id)


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


def record_final(metrics: MetricsRecorder, job: Job, *, pipe: Pipeline) -> None:
    metrics.count("jobs", job.status.value, job.error.code if job.error else "", pipe=pipe)
    if job.completed_at is None:
        return
    metrics.observe("job_duration", (job.completed_at - job.created_at).total_seconds(),
                    pipe=pipe)
    if job.started_at is not None:
        metrics.observe("celery_task_runtime",
                        (job.completed_at - job.started_at).total_seconds(), "mysisterdb.chat",
                        pipe=pipe)


def fail_job(jobs: JobStore, job_id: str, *, code: ErrorCode, message: str, exception: str,
             action: str, partial_ok: bool = True) -> Job | None:
    """End a job that stopped: `incomplete` if text was generated, else `failed`.

    Time limits, lost workers and LLM failures also go into the incident table, in the same
    transaction as the status.
    """
    def final_status(job: Job) -> JobStatus:
        return JobStatus.INCOMPLETE if partial_ok and job.partial_reply else JobStatus.FAILED

    def incident(pipe: Pipeline, job: Job) -> None:
        if is_incident(job):
            IncidentLog(jobs.redis).record_job(job, exception=exception, action=action, pipe=pipe)

    ended = jobs.finalize(job_id, status=final_status, after=incident,
                          error=JobError(code=code.value, message=message))
    if ended is not None and is_incident(ended):
        logger.warning("incident: %s %s: %s -> %s", code.value, job_id, exception, action)
    return ended
