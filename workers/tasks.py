"""Celery tasks. The chat task runs one prompt's pipeline under the hard time limit.

Every end goes through `core.lifecycle`:
- in the child, for everything it can catch (soft limit, LLM errors, bugs), with a last
  resort around it for what escapes the handlers themselves;
- in the parent (`JobRequest`), for what kills the child: the hard limit, a lost child;
- in the sweep (the API's and each worker's main process) for a job whose whole worker died
  or that never started.
A prompt runs at most once: `Lifecycle.claim` starts only a queued job that never started
and is the head of its conversation's line, so a duplicate message finds nothing to do.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import redis
from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request

from core.capacity import record_reply
from core.errors import ErrorCode, LLMError
from core.history import history_store
from core.lifecycle import ClaimStatus, JobGone, Lifecycle, Limits, Outcome
from core.logs import job_context
from core.metrics import MetricsRecorder
from core.models import Job
from core.ports import CHAT_TASK, EMBED_TASK, SUMMARY_TASK
from core.redis_client import connect
from core.settings import get_settings
from workers import embeddings, pipeline, summary
from workers.llm import PartialReplyError
from workers.runtime import Runtime, get_runtime
from workers.signals import wake_sweeper

logger = logging.getLogger(__name__)

REDIS_RETRY_MAX_S = 5.0
PARENT_REDIS_TIMEOUT_S = 1.0


@lru_cache(maxsize=1)
def parent_lifecycle() -> Lifecycle:
    """The parent's own client: short timeouts, no retries, and no publishing (the
    sweeper thread publishes the hand-over), so that a hung Redis can never stall the loop
    that enforces the other children's hard limits."""
    settings = get_settings()
    client = connect(settings.redis_url, timeout_s=PARENT_REDIS_TIMEOUT_S)
    return Lifecycle(client=client, history=history_store(client),
                     limits=Limits.from_settings(settings), broker=None)


class JobRequest(Request):  # type: ignore[misc]
    """Runs in the worker's parent process: sees what kills the child."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            held_slot(parent_lifecycle().redis, timeout)
            end_from_parent(self.id, Outcome.failed(
                ErrorCode.TIMEOUT, exception=f"TimeLimitExceeded({timeout:g} s)",
                action=f"ハードリミット（{timeout:g} 秒）でプロセスを強制終了し、ワーカープロセスを"
                       "入れ替えた"), hard_limit=True)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)
        if isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)):
            end_from_parent(self.id, Outcome.failed(
                ErrorCode.WORKER_LOST, exception=f"{type(exc).__name__}: {exc}",
                action="ワーカープロセスを入れ替えた（プロンプトは再実行しない）"))
        elif isinstance(exc, TimeLimitExceeded):
            end_from_parent(self.id, Outcome.failed(
                ErrorCode.TIMEOUT, exception=repr(exc), action="ハードリミットでプロセスを強制終了した"))


def end_from_parent(job_id: str, outcome: Outcome, *, hard_limit: bool = False) -> None:
    try:
        lifecycle = parent_lifecycle()
        if hard_limit:
            MetricsRecorder(lifecycle.redis).count("time_limits", "hard")
        if lifecycle.end(job_id, outcome) is not None:
            logger.error("job %s ended by the worker parent: %s (%s)", job_id, outcome.code,
                         outcome.action)
            wake_sweeper()
    except Exception:  # the parent must survive a Redis hiccup; the sweep catches up
        logger.exception("could not end job %s from the worker parent", job_id)


class ChatTask(Task):  # type: ignore[misc]
    Request = JobRequest
    acks_late = True
    max_retries = None  # only Redis blinking before the start retries; the sweep bounds it


def held_slot(client: redis.Redis, seconds: float) -> None:
    """How long a prompt held its slot: the reply time behind admission (429)."""
    try:
        record_reply(client, seconds)
    except redis.RedisError as exc:  # a lost sample must never fail a job
        logger.warning("reply time not recorded: %s", exc)


@shared_task(bind=True, base=ChatTask, name=CHAT_TASK)
def chat(self: ChatTask, job_id: str) -> str:
    started = time.monotonic()
    try:
        rt = get_runtime()
        claim = rt.lifecycle.claim(job_id)
    except (redis.RedisError, SoftTimeLimitExceeded) as exc:
        # Not started (Redis blinked, or the runtime could not be built within the soft
        # limit): try again, so the prompt is not left queued; the queue timeout bounds this.
        countdown = min(REDIS_RETRY_MAX_S, 1.0 + self.request.retries)
        logger.warning("job %s: not started (%s); retrying", job_id, type(exc).__name__)
        raise self.retry(countdown=countdown) from exc
    if claim.status is not ClaimStatus.CLAIMED or claim.job is None:
        logger.info("job %s not run: %s", job_id, claim.status.value)
        return claim.status.value
    deadline = started + rt.settings.task_soft_time_limit - 0.5
    try:
        with job_context(job_id=job_id, conversation_id=claim.job.conversation_id):
            return run_guarded(rt, claim.job, deadline=deadline)
    except BaseException as exc:  # escaped every handler (e.g. the soft limit inside one)
        last_resort(rt, job_id, exc)
        raise
    finally:
        held_slot(rt.redis, time.monotonic() - started)


def run_guarded(rt: Runtime, job: Job, *, deadline: float) -> str:
    try:
        summary_due = pipeline.run_chat(rt, job, deadline=deadline)
    except JobGone:
        return "gone"
    except SoftTimeLimitExceeded:
        rt.metrics.count("time_limits", "soft")
        rt.lifecycle.end(job.id, Outcome.failed(
            ErrorCode.TIMEOUT, exception="SoftTimeLimitExceeded",
            action=f"ソフトリミット（{rt.settings.task_soft_time_limit:g} 秒）でタスクを中断した"))
        return ErrorCode.TIMEOUT.value
    except LLMError as error:
        rt.lifecycle.end(job.id, llm_outcome(rt, error))
        return error.error_code.value
    except redis.RedisError as exc:
        # Redis went away under the prompt (killed, restarted, frozen past the retries). The
        # end is written once it answers again (the client retries); if it does not, this
        # raises on to the last resort, and the sweep ends the job later (worker_lost).
        logger.error("job %s: redis lost while running: %s", job.id, exc)
        rt.lifecycle.end(job.id, store_lost(exc, action="ジョブを失敗で終了した（プロンプトは再試行できる）"))
        return ErrorCode.STORE_UNAVAILABLE.value
    except Exception as exc:
        logger.exception("job %s failed", job.id)
        rt.lifecycle.end(job.id, Outcome.failed(
            ErrorCode.INTERNAL, exception=f"{type(exc).__name__}: {exc}", action="ジョブを失敗で終了した",
            keep_partial=False))
        return ErrorCode.INTERNAL.value
    if summary_due:  # most replies leave nothing to fold: no task, no flag, no broker message
        queue_summary(rt, job.conversation_id)
    queue_embedding(rt, job.conversation_id)
    return "completed"


def llm_outcome(rt: Runtime, error: LLMError) -> Outcome:
    cause = error.__cause__ or getattr(error, "cause", None) or error
    return Outcome.failed(
        error.error_code, message=error.message, exception=f"{type(cause).__name__}: {cause}"[:500],
        action=f"リクエストを最大 {rt.settings.gemini_retries} 回再試行したが失敗した",
        # The stream broke mid-way: keep exactly what arrived.
        partial=error.partial if isinstance(error, PartialReplyError) else None)


def store_lost(exc: BaseException, *, action: str) -> Outcome:
    return Outcome.failed(ErrorCode.STORE_UNAVAILABLE, exception=f"{type(exc).__name__}: {exc}",
                          action=action)


def last_resort(rt: Runtime, job_id: str, exc: BaseException) -> None:
    action = "タスクの最後の例外処理でジョブを終了した"
    if isinstance(exc, redis.RedisError):
        outcome = store_lost(exc, action=action)
    elif isinstance(exc, (SystemExit, KeyboardInterrupt)):
        # The worker stopped the task: it lost its broker connection (Redis died) and cancels
        # what it can no longer acknowledge, or it is shutting down.
        outcome = Outcome.failed(
            ErrorCode.WORKER_LOST, exception=f"{type(exc).__name__}: ワーカーがタスクを止めた",
            action="ワーカーがタスクを止めた（ブローカーとの接続が切れたか、停止処理中）")
    else:
        outcome = Outcome.failed(
            ErrorCode.TIMEOUT if isinstance(exc, SoftTimeLimitExceeded) else ErrorCode.INTERNAL,
            exception=f"ジョブの終了処理中に {type(exc).__name__}", action=action)
    try:
        rt.lifecycle.end(job_id, outcome)
    except BaseException:  # nothing more to do here; the sweep ends the job
        logger.exception("job %s: last-resort end failed", job_id)


def queue_summary(rt: Runtime, conversation_id: str) -> None:
    try:
        summary.request_summary(rt, conversation_id)
    except Exception:  # a summary is an optimisation: never fail a finished chat job
        logger.exception("could not queue the summary of %s", conversation_id)


def queue_embedding(rt: Runtime, conversation_id: str) -> None:
    if not rt.settings.embeddings_enabled:
        return
    try:
        embeddings.request_embedding(rt, conversation_id)
    except Exception:  # embeddings are an addition to recall: never fail a finished chat job
        logger.exception("could not queue the embedding of %s", conversation_id)


@shared_task(name=EMBED_TASK, acks_late=True)
def embed(conversation_id: str, token: str = "", after_seq: int | None = None) -> str:
    """The tail task (token: its dedup flag) or, with after_seq, one backfill batch."""
    started = time.monotonic()
    rt = get_runtime()
    result = "failed"
    with job_context(job_id="-", conversation_id=conversation_id):
        try:
            result = run_embedding(rt, conversation_id, after_seq=after_seq,
                                   deadline=embeddings.task_deadline(rt, started))
            return result
        finally:
            if token:
                embeddings.release_flag(rt, conversation_id, token)
                # A chat job that completed while the flag was held could not queue its own
                # task: its messages are in the window now, after the release.  Not after
                # a failure: the next chat job tries again, no loop of failing tasks.
                if result == "done" and embeddings.tail_missing(rt, conversation_id):
                    queue_embedding(rt, conversation_id)


def run_embedding(rt: Runtime, conversation_id: str, *, after_seq: int | None,
                  deadline: float) -> str:
    if not rt.settings.embeddings_enabled:  # queued by a process whose settings differ
        logger.warning("embedding of %s not run: embeddings are off in this worker",
                       conversation_id)
        return "off"
    try:
        if after_seq is None:
            stored = embeddings.embed_tail(rt, conversation_id, deadline=deadline)
        else:
            stored, next_seq = embeddings.backfill_batch(rt, conversation_id, after_seq=after_seq,
                                                         deadline=deadline)
            if next_seq is not None:
                embeddings.request_backfill(rt, conversation_id, after_seq=next_seq)
    except (LLMError, SoftTimeLimitExceeded) as exc:
        # Not retried here: the next completed chat job queues the tail again, and a
        # backfill is resumed by running `mysisterdb reindex --embeddings` again.
        logger.warning("embedding of %s failed (%s: %s)", conversation_id,
                       type(exc).__name__, exc)
        rt.metrics.count("embedding_tasks", "failed")
        return "failed"
    rt.metrics.count("embedding_tasks", "done")
    logger.info("conversation %s: %d messages embedded", conversation_id, stored)
    return "done"


@shared_task(bind=True, name=SUMMARY_TASK, max_retries=3, acks_late=True)
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
            delay_s = rt.settings.summary_retry_s * (self.request.retries + 1)
            raise self.retry(countdown=delay_s) from exc
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
