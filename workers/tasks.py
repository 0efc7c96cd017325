"""Celery tasks. The chat task runs one prompt's pipeline under the hard time limit.

Finalization happens in four places, so every job reaches a final state:
- in the child, for everything it can catch (soft limit, LLM errors, bugs), with a last
  resort around it for what escapes the handlers themselves;
- in the parent (`JobRequest`), for what kills the child: the hard limit, a lost child;
- in the reapers (`mysisterdb.ordering`), run by the next job of the conversation and by any
  reader of the job: a job running past the hard limit, or queued past the queue timeout;
- in `mysisterdb check --repair`.
A prompt runs at most once: `JobStore.claim` starts only a queued job that never started,
so a duplicate or redelivered message finds nothing to do.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request

from mysisterdb.errors import LLMError
from mysisterdb.jobs import JobStore, fail_job
from mysisterdb.logs import job_context
from mysisterdb.metrics import MetricsRecorder
from mysisterdb.models import ErrorCode, Job, JobStatus
from mysisterdb.ordering import must_wait, queued_too_long, reap_if_stale
from mysisterdb.redis_client import connect
from mysisterdb.settings import get_settings
from workers import pipeline, summary
from workers.celery_app import CHAT_TASK, SUMMARY_TASK, celery_app
from workers.runtime import Runtime, get_runtime

logger = logging.getLogger(__name__)

WAIT_FOR_TURN_S = 0.25
REDIS_RETRY_S = 1.0
SUMMARY_RETRY_S = 30
PARENT_REDIS_TIMEOUT_S = 1.0
WORKER_LOST_MESSAGE = "応答を生成していたプロセスが停止しました。もう一度試してください。"
INTERNAL_MESSAGE = "内部エラーが発生しました。もう一度試してください。"

_parent_jobs: list[JobStore] = []


def parent_jobs() -> JobStore:
    """The parent's own client: short timeouts, no retries, so that a hung Redis can never
    stall the loop that enforces the other children's hard limits."""
    if not _parent_jobs:
        _parent_jobs.append(JobStore(connect(get_settings().redis_url,
                                             timeout_s=PARENT_REDIS_TIMEOUT_S)))
    return _parent_jobs[0]


class JobRequest(Request):  # type: ignore[misc]
    """Runs in the worker's parent process: sees what kills the child."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            end_from_parent(self.id, code=ErrorCode.TIMEOUT, message=pipeline.TIMEOUT_MESSAGE,
                            exception=f"TimeLimitExceeded({timeout:g} s)",
                            action=f"process killed at the hard limit ({timeout:g} s); "
                                   "worker process replaced", hard_limit=True)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)
        if isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)):
            end_from_parent(self.id, code=ErrorCode.WORKER_LOST, message=WORKER_LOST_MESSAGE,
                            exception=f"{type(exc).__name__}: {exc}",
                            action="worker process replaced; prompt not run again")
        elif isinstance(exc, TimeLimitExceeded):
            end_from_parent(self.id, code=ErrorCode.TIMEOUT, message=pipeline.TIMEOUT_MESSAGE,
                            exception=repr(exc), action="process killed at the hard limit")


def end_from_parent(job_id: str, *, code: ErrorCode, message: str, exception: str,
                    action: str, hard_limit: bool = False) -> None:
    try:
        jobs = parent_jobs()
        if hard_limit:
            MetricsRecorder(jobs.redis).count("time_limits", "hard")
        fail_job(jobs, job_id, code=code, message=message, exception=exception, action=action)
        logger.error("job %s ended by the worker parent: %s (%s)", job_id, code.value, action)
    except Exception:  # the parent must survive a Redis hiccup; the reapers catch up
        logger.exception("could not finalize job %s from the worker parent", job_id)


class ChatTask(Task):  # type: ignore[misc]
    Request = JobRequest
    acks_late = True
    max_retries = None  # waiting for our turn is bounded by the reapers' limits


WAIT = "wait"


@celery_app.task(bind=True, base=ChatTask, name=CHAT_TASK)
def chat(self: ChatTask, job_id: str) -> str:
    started = time.monotonic()
    rt = get_runtime()
    try:
        admitted = admit(rt, job_id)
    except redis.RedisError as exc:
        # Redis blinked before the job started: try again; the queue timeout bounds this.
        logger.warning("job %s: redis unavailable before start (%s); retrying", job_id, exc)
        raise self.retry(countdown=REDIS_RETRY_S) from exc
    if admitted == WAIT:
        # Quick at first (the predecessor is usually about to finish), then calmer.
        raise self.retry(countdown=min(1.0, WAIT_FOR_TURN_S * (1 + self.request.retries // 8)))
    if isinstance(admitted, str):
        return admitted
    deadline = started + rt.settings.task_soft_time_limit - 0.5
    try:
        with job_context(job_id=job_id, conversation_id=admitted.conversation_id):
            return run_guarded(rt, admitted, deadline=deadline)
    except BaseException as exc:  # escaped every handler (e.g. the soft limit inside one)
        last_resort(rt, job_id, exc)
        raise


def admit(rt: Runtime, job_id: str) -> Job | str:
    """The job, now claimed by us; WAIT (an earlier turn is unfinished); or why not."""
    s = rt.settings
    job = rt.jobs.find(job_id)
    if job is None or job.status.is_final:
        return "skipped"
    if job.status is JobStatus.IN_PROGRESS:
        # A second delivery of a running (or dead) job's message: never run it again.
        reap_if_stale(rt.jobs, job, hard_limit_s=s.task_time_limit,
                      queue_timeout_s=s.queue_timeout_s)
        return "duplicate"
    if queued_too_long(job, queue_timeout_s=s.queue_timeout_s):
        reap_if_stale(rt.jobs, job, hard_limit_s=s.task_time_limit,
                      queue_timeout_s=s.queue_timeout_s)
        return "expired"
    if must_wait(rt.jobs, job, hard_limit_s=s.task_time_limit,
                 queue_timeout_s=s.queue_timeout_s):
        return WAIT
    return rt.jobs.claim(job_id) or "skipped"


def run_guarded(rt: Runtime, job: Job, *, deadline: float) -> str:
    try:
        pipeline.run_chat(rt, job, deadline=deadline)
    except pipeline.JobGone:
        return "gone"
    except SoftTimeLimitExceeded:
        rt.metrics.count("time_limits", "soft")
        pipeline.fail(rt, job.id, code=ErrorCode.TIMEOUT, message=pipeline.TIMEOUT_MESSAGE,
                      exception="SoftTimeLimitExceeded",
                      action=f"task stopped at the soft limit ({rt.settings.task_soft_time_limit:g} s)")
        return "timeout"
    except LLMError as error:
        pipeline.fail_llm(rt, job.id, error)
        return error.code
    except Exception as exc:
        logger.exception("job %s failed", job.id)
        pipeline.fail(rt, job.id, code=ErrorCode.INTERNAL, message=INTERNAL_MESSAGE,
                      exception=f"{type(exc).__name__}: {exc}", action="job failed",
                      partial_ok=False)
        return "internal"
    queue_summary(rt, job.conversation_id)
    return "completed"


def last_resort(rt: Runtime, job_id: str, exc: BaseException) -> None:
    timed_out = isinstance(exc, SoftTimeLimitExceeded)
    try:
        pipeline.fail(rt, job_id, code=ErrorCode.TIMEOUT if timed_out else ErrorCode.INTERNAL,
                      message=pipeline.TIMEOUT_MESSAGE if timed_out else INTERNAL_MESSAGE,
                      exception=f"{type(exc).__name__} while ending the job",
                      action="ended by the task's last-resort handler")
    except BaseException:  # nothing more to do here; the reapers end the job
        logger.exception("job %s: last-resort finalize failed", job_id)


def queue_summary(rt: Runtime, conversation_id: str) -> None:
    try:
        summary.request_summary(rt, celery_app, conversation_id)
    except Exception:  # a summary is an optimisation: never fail a finished chat job
        logger.exception("could not queue the summary of %s", conversation_id)


SUMMARY_HARD_S = get_settings().summary_time_limit


@celery_app.task(bind=True, name=SUMMARY_TASK, time_limit=SUMMARY_HARD_S,
                 soft_time_limit=summary.soft_limit(SUMMARY_HARD_S), max_retries=3,
                 acks_late=True)
def summarize(self: Task, conversation_id: str, token: str = "") -> str:
    started = time.monotonic()
    rt = get_runtime()
    try:
        more = summary.summarize_once(rt, conversation_id,
                                      deadline=summary.summary_deadline(rt, started))
    except (LLMError, SoftTimeLimitExceeded) as exc:
        if self.request.retries < (self.max_retries or 0):
            logger.warning("summary of %s failed (%s); retrying later", conversation_id, exc)
            summary.keep_flag(rt, conversation_id, token)
            raise self.retry(countdown=SUMMARY_RETRY_S * (self.request.retries + 1)) from exc
        logger.error("summary of %s failed (%s); the next chat job queues it again",
                     conversation_id, exc)
        summary.release_flag(rt, conversation_id, token)
        return "failed"
    except BaseException:
        summary.release_flag(rt, conversation_id, token)
        raise
    summary.release_flag(rt, conversation_id, token)
    if more:
        queue_summary(rt, conversation_id)
    return "more" if more else "done"
