"""Celery tasks. The chat task runs one prompt's pipeline under the hard time limit.

Finalization happens in three places, so every job reaches a final state:
- in the child, for everything it can catch (soft limit, LLM errors, bugs);
- in the parent (`JobRequest`), for what kills the child: the hard limit, a lost child;
- in the next job of the conversation or the API (`reap_if_stale`), for a worker that died
  entirely: a job running longer than the hard limit is surely dead.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request

from mysisterdb import keys
from mysisterdb.errors import LLMError
from mysisterdb.logs import job_context
from mysisterdb.models import ErrorCode, Job, JobStatus, utcnow
from mysisterdb.ordering import blocking_predecessor
from mysisterdb.settings import get_settings
from workers import pipeline, summary
from workers.celery_app import CHAT_TASK, SUMMARY_TASK, celery_app
from workers.runtime import Runtime, get_runtime

logger = logging.getLogger(__name__)

WAIT_FOR_TURN_S = 0.25
SUMMARY_RETRY_S = 30
WORKER_LOST_MESSAGE = "応答を生成していたプロセスが停止しました。もう一度試してください。"


class JobRequest(Request):  # type: ignore[misc]
    """Runs in the worker's parent process: sees what kills the child."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            get_runtime().metrics.count("time_limits", "hard")
            finalize_from_parent(self.id, code=ErrorCode.TIMEOUT,
                                 message=pipeline.TIMEOUT_MESSAGE,
                                 exception=f"TimeLimitExceeded({timeout:g} s)",
                                 action=f"process killed at the hard limit ({timeout:g} s); "
                                        "worker process replaced")

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)
        if isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)):
            finalize_from_parent(self.id, code=ErrorCode.WORKER_LOST,
                                 message=WORKER_LOST_MESSAGE,
                                 exception=f"{type(exc).__name__}: {exc}",
                                 action="worker process replaced; prompt not run again")
        elif isinstance(exc, TimeLimitExceeded):
            finalize_from_parent(self.id, code=ErrorCode.TIMEOUT,
                                 message=pipeline.TIMEOUT_MESSAGE, exception=repr(exc),
                                 action="process killed at the hard limit; worker process replaced")


def finalize_from_parent(job_id: str, *, code: ErrorCode, message: str, exception: str,
                         action: str) -> None:
    try:
        rt = get_runtime()
        pipeline.fail(rt, job_id, code=code, message=message, exception=exception, action=action)
        logger.error("job %s ended by the worker parent: %s (%s)", job_id, code.value, action)
    except Exception:  # the parent must survive a Redis hiccup; the reaper catches up
        logger.exception("could not finalize job %s from the worker parent", job_id)


class ChatTask(Task):  # type: ignore[misc]
    Request = JobRequest
    acks_late = True
    max_retries = None  # waiting for our turn is bounded by the predecessor's hard limit


@celery_app.task(bind=True, base=ChatTask, name=CHAT_TASK)
def chat(self: ChatTask, job_id: str) -> str:
    started = time.monotonic()
    rt = get_runtime()
    job = rt.jobs.find(job_id)
    if job is None or job.status.is_final:
        return "skipped"
    if job.attempts > 0:
        return refuse_rerun(rt, job)
    if blocking_predecessor(rt.jobs, job, hard_limit_s=rt.settings.task_time_limit) is not None:
        raise self.retry(countdown=WAIT_FOR_TURN_S)
    if rt.jobs.update(job_id, mark_started) is None:
        return "skipped"
    rt.redis.set(keys.last_job_started_at(), str(time.time()))
    deadline = started + rt.settings.task_soft_time_limit - 0.5
    with job_context(job_id=job_id, conversation_id=job.conversation_id):
        return run_guarded(rt, job_id, deadline=deadline)


def mark_started(job: Job) -> None:
    job.status = JobStatus.IN_PROGRESS
    job.attempts += 1
    job.started_at = job.heartbeat_at = utcnow()
    job.worker_pid = os.getpid()


def refuse_rerun(rt: Runtime, job: Job) -> str:
    """A redelivered prompt that already started once: its worker died. Never run it twice."""
    pipeline.fail(rt, job.id, code=ErrorCode.WORKER_LOST, message=WORKER_LOST_MESSAGE,
                  exception="message redelivered after its worker died",
                  action="not run a second time (no poison loop)")
    logger.error("job %s redelivered after its worker died; not run again", job.id)
    return "worker_lost"


def run_guarded(rt: Runtime, job_id: str, *, deadline: float) -> str:
    job = rt.jobs.get(job_id)
    try:
        pipeline.run_chat(rt, job, deadline=deadline)
        queue_summary(rt, job.conversation_id)
        return "completed"
    except pipeline.JobGone:
        return "gone"
    except SoftTimeLimitExceeded:
        rt.metrics.count("time_limits", "soft")
        pipeline.fail(rt, job_id, code=ErrorCode.TIMEOUT, message=pipeline.TIMEOUT_MESSAGE,
                      exception="SoftTimeLimitExceeded",
                      action=f"task stopped at the soft limit ({rt.settings.task_soft_time_limit:g} s)")
        return "timeout"
    except LLMError as error:
        pipeline.fail_llm(rt, job_id, error)
        return error.code
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        pipeline.fail(rt, job_id, code=ErrorCode.INTERNAL,
                      message="内部エラーが発生しました。もう一度試してください。",
                      exception=f"{type(exc).__name__}: {exc}", action="job failed",
                      partial_ok=False)
        return "internal"


def queue_summary(rt: Runtime, conversation_id: str) -> None:
    try:
        summary.request_summary(rt, celery_app, conversation_id)
    except Exception:  # a summary is an optimisation: never fail a finished chat job
        logger.exception("could not queue the summary of %s", conversation_id)


SUMMARY_HARD_S = get_settings().summary_time_limit


@celery_app.task(bind=True, name=SUMMARY_TASK, time_limit=SUMMARY_HARD_S,
                 soft_time_limit=summary.soft_limit(SUMMARY_HARD_S), max_retries=3,
                 acks_late=True)
def summarize(self: Task, conversation_id: str) -> str:
    started = summary.now()
    rt = get_runtime()
    flag = keys.conv_summarizing(conversation_id)
    try:
        more = summary.summarize_once(rt, conversation_id,
                                      deadline=summary.summary_deadline(rt, started))
    except (LLMError, SoftTimeLimitExceeded) as exc:
        if self.request.retries < (self.max_retries or 0):
            logger.warning("summary of %s failed (%s); retrying later", conversation_id, exc)
            raise self.retry(countdown=SUMMARY_RETRY_S * (self.request.retries + 1)) from exc
        logger.error("summary of %s failed (%s); the next chat job queues it again",
                     conversation_id, exc)
        rt.redis.delete(flag)
        return "failed"
    except BaseException:
        rt.redis.delete(flag)
        raise
    rt.redis.delete(flag)
    if more:
        queue_summary(rt, conversation_id)
    return "more" if more else "done"
