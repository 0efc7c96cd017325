"""Order within a conversation: a job runs only after the job of the previous turn ended.

Turns are handed out in submit order, so "the previous turn is final" chains every job of
a conversation behind the one before. A predecessor running longer than the hard limit
is dead (the limit would have killed it): it is marked failed/worker_lost on the spot, so
a dead task never holds its conversation for longer than the hard limit.
"""

from __future__ import annotations

import logging

from mysisterdb.jobs import JobStore, fail_job
from mysisterdb.models import ErrorCode, Job

logger = logging.getLogger(__name__)

STALE_GRACE_S = 2.0
LOST_MESSAGE = "応答を生成していたプロセスが停止しました。もう一度試してください。"


def previous_job_id(jobs: JobStore, job: Job) -> str | None:
    if job.turn <= 1:
        return None
    return jobs.job_id_for_turn(job.conversation_id, job.turn - 1)


def reap_if_stale(jobs: JobStore, job: Job, *, hard_limit_s: float) -> Job:
    """Mark a running job failed/worker_lost once it has outlived the hard limit."""
    if not jobs.stale_deadline_passed(job, hard_limit_s=hard_limit_s, grace_s=STALE_GRACE_S):
        return job
    logger.error("job %s outlived the hard limit: its worker is gone", job.id)
    ended = fail_job(jobs, job.id, code=ErrorCode.WORKER_LOST, message=LOST_MESSAGE,
                     exception=f"no end recorded {hard_limit_s:g} s after start (worker died)",
                     action="marked failed by the reaper; the conversation moves on")
    return ended or jobs.get(job.id)


def blocking_predecessor(jobs: JobStore, job: Job, *, hard_limit_s: float) -> Job | None:
    """The previous turn's job if it has not ended yet, else None."""
    prev_id = previous_job_id(jobs, job)
    prev = jobs.find(prev_id) if prev_id else None
    if prev is None:
        return None
    prev = reap_if_stale(jobs, prev, hard_limit_s=hard_limit_s)
    return None if prev.status.is_final else prev
