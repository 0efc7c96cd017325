"""The dead-job rules and the sweep: publish what the outbox kept too long, resend lost
messages, end what can no longer end by itself."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from core.errors import ErrorCode
from core.models import Job, JobStatus, utcnow
from core.outcomes import Outcome, SweepReport
from core.reservations import (
    chat_reservations,
    chat_waiting,
    forget_reservation,
    stale_chat_reservations,
)

if TYPE_CHECKING:
    from core.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100  # per kind and sweep: a backlog is worked off over a few sweeps

def death(lc: Lifecycle, job: Job) -> ErrorCode | None:
    """Why a job can no longer end by itself, or None while it still can."""
    now, lim = utcnow(), lc.limits
    running_for = now - (job.started_at or job.created_at)
    if (job.status is JobStatus.IN_PROGRESS
            and running_for > timedelta(seconds=lim.hard_limit_s + lim.grace_s)):
        return ErrorCode.WORKER_LOST  # the hard limit would have killed it
    if (job.status is JobStatus.QUEUED
            and now - job.created_at > timedelta(seconds=lim.queue_timeout_s)):
        return ErrorCode.EXPIRED
    return None


def reap(lc: Lifecycle, job: Job, *, by: str = "スイープ") -> Job:
    """End a job that can no longer end by itself; return it as it now is."""
    code = death(lc, job)
    if code is None:
        return job
    cause = (f"開始から {lc.limits.hard_limit_s:g} 秒経っても終了の記録がない"
             if code is ErrorCode.WORKER_LOST
             else f"投入から {lc.limits.queue_timeout_s:g} 秒経っても開始されない")
    logger.error("job %s: %s; ending it", job.id, cause)
    ended = lc.end(job.id, Outcome.failed(
        code, exception=cause, action=f"失敗として終了させた（{by}）。会話は次のターンへ進む"))
    return ended or lc.jobs.get(job.id)


def sweep(lc: Lifecycle, *, outbox_grace_s: float | None = None) -> SweepReport:
    """Publish what the outbox kept too long; end what can no longer end by itself."""
    report, now, lim = SweepReport(), time.time(), lc.limits
    grace = lim.outbox_grace_s if outbox_grace_s is None else outbox_grace_s
    for job_id in lc.jobs.outbox_due(before_epoch=now - grace)[:SWEEP_BATCH]:
        if lc.publish_now(job_id):
            report.published.append(job_id)
    _resend_lost_reservations(lc, report, now=now)
    _resend_lost_messages(lc, report, now=now)
    dead = (lc.jobs.ids_started_before(now - lim.hard_limit_s - lim.grace_s)[:SWEEP_BATCH]
            + lc.jobs.ids_created_before(now - lim.queue_timeout_s)[:SWEEP_BATCH])
    for job_id in dict.fromkeys(dead):
        job = lc.jobs.find(job_id)
        if job is not None and reap(lc, job).status.is_final:
            report.ended.append(job_id)
    return report


def _resend_lost_reservations(lc: Lifecycle, report: SweepReport, *, now: float) -> None:
    """A prompt a worker reserved and never started (it lost its connection, Redis was
    restarted) would wait out the visibility timeout: send it again now."""
    if lc.broker is None:
        return
    for lost in stale_chat_reservations(
            lc.redis, reserved_before_epoch=now - lc.limits.stale_reservation_s,
            limit=SWEEP_BATCH):
        job = lc.jobs.find(lost.job_id)
        if job is not None and job.status is JobStatus.QUEUED and job.attempts == 0:
            logger.warning("job %s: reserved %g s ago and never started; sent again",
                           lost.job_id, lc.limits.stale_reservation_s)
            if lc.publish_now(lost.job_id):
                forget_reservation(lc.redis, lost.tag)
                report.published.append(lost.job_id)


def _resend_lost_messages(lc: Lifecycle, report: SweepReport, *, now: float) -> None:
    """A head sent a while ago that is neither waiting in the broker nor reserved by a
    worker, and not started, lost its message (a task that died before its claim, a
    broker that dropped it): send it again. While the chat queue is not empty the wait
    may be a backlog, so nothing is judged then."""
    if lc.broker is None or chat_waiting(lc.redis) > 0:
        return
    candidates = lc.jobs.dispatched_before(now - lc.limits.lost_message_s,
                                             limit=SWEEP_BATCH)
    if not candidates:
        return
    reserved = {r.job_id for r in chat_reservations(lc.redis)}
    for job_id in candidates:
        if job_id in reserved or job_id in report.published:
            continue
        job = lc.jobs.find(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            lc.jobs.forget_dispatch(job_id)
            continue
        logger.warning("job %s: its message was lost before it started; sent again", job_id)
        if lc.publish_now(job_id):
            report.published.append(job_id)
