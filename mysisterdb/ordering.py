"""Order within a conversation, and the reapers that keep it from ever blocking for good.

A job runs only when no earlier turn of its conversation is still unfinished (the
conversation's `active` sorted set, kept in step with job statuses by JobStore). So jobs of
one conversation run one at a time, in submit order, even when one in the middle was
cancelled or failed before it ran.

An earlier job that can no longer end by itself is ended here, on the spot:
- running longer than the hard limit: its process is surely gone (the limit would have
  killed it) -> failed/worker_lost;
- queued longer than MYSISTERDB_QUEUE_TIMEOUT_S: its message was lost (a Redis failure
  between storing and enqueueing, a dropped retry) or the backlog is hopeless -> failed/expired.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from mysisterdb.jobs import JobStore, fail_job
from mysisterdb.models import ErrorCode, Job, JobStatus, utcnow

logger = logging.getLogger(__name__)

STALE_GRACE_S = 2.0
LOST_MESSAGE = "応答を生成していたプロセスが停止しました。もう一度試してください。"
EXPIRED_MESSAGE = "混み合っていたため処理を開始できませんでした。もう一度送ってください。"
MAX_SKIPS = 50  # bounded walk over stale entries of the active set


def queued_too_long(job: Job, *, queue_timeout_s: float) -> bool:
    return (job.status is JobStatus.QUEUED
            and utcnow() - job.created_at > timedelta(seconds=queue_timeout_s))


def reap_if_stale(jobs: JobStore, job: Job, *, hard_limit_s: float,
                  queue_timeout_s: float) -> Job:
    """End a job that can no longer end by itself; return it as it now is."""
    if jobs.stale_deadline_passed(job, hard_limit_s=hard_limit_s, grace_s=STALE_GRACE_S):
        logger.error("job %s outlived the hard limit: its worker is gone", job.id)
        ended = fail_job(jobs, job.id, code=ErrorCode.WORKER_LOST, message=LOST_MESSAGE,
                         exception=f"no end recorded {hard_limit_s:g} s after start",
                         action="marked failed by the reaper; the conversation moves on")
        return ended or jobs.get(job.id)
    if queued_too_long(job, queue_timeout_s=queue_timeout_s):
        logger.error("job %s never started within %.0f s", job.id, queue_timeout_s)
        ended = fail_job(jobs, job.id, code=ErrorCode.EXPIRED, message=EXPIRED_MESSAGE,
                         exception=f"still queued {queue_timeout_s:g} s after submit",
                         action="marked failed by the reaper; the conversation moves on")
        return ended or jobs.get(job.id)
    return job


def must_wait(jobs: JobStore, job: Job, *, hard_limit_s: float,
              queue_timeout_s: float) -> bool:
    """True while an earlier job of the conversation is unfinished (after reaping the dead)."""
    for _ in range(MAX_SKIPS):
        first_id = jobs.first_active_before(job.conversation_id, turn=job.turn)
        if first_id is None:
            return False
        first = jobs.find(first_id)
        if first is None or first.status.is_final:
            jobs.forget_active(job.conversation_id, first_id)  # expired record, or a stray
            continue
        first = reap_if_stale(jobs, first, hard_limit_s=hard_limit_s,
                              queue_timeout_s=queue_timeout_s)
        if not first.status.is_final:
            return True
    return True  # many dead entries cleared this time: look again on the next try
