"""What a running job writes as it goes: its steps and its text so far.

Each write is a transaction on the job record (`JobStore.update`) and wakes every follower,
so a prompt's bookkeeping is folded into as few as its promises allow: the claim starts the
first step (`Lifecycle.claim`), one write ends a step and starts the next (`advance`, its
duration metric in the same transaction; the worker ends load_history and build_context in
one), the end finishes the last step (`Outcome.completed` with `StepDone`), and the streamed
text is coalesced by the worker (workers/stream_text.py).
A write meant for a job that already ended is refused (`JobGone`): a late child never
resurrects it. The worker passes the record as it last wrote it (`known`): a write is then
one round trip (`JobStore.update`).
"""

from __future__ import annotations

from datetime import datetime

from redis.client import Pipeline

from core.jobs import JobStore, Skip
from core.metrics import MetricsRecorder
from core.models import Job, StepName, StepStatus, utcnow
from core.outcomes import JobGone, StepDone


def start_step(jobs: JobStore, job_id: str, name: StepName) -> None:
    def start(job: Job) -> None:
        step = job.step(name)
        step.status, step.started_at = StepStatus.IN_PROGRESS, utcnow()
        job.heartbeat_at = step.started_at

    if jobs.update(job_id, start) is None:
        raise JobGone(job_id)


def finish_step(jobs: JobStore, job_id: str, name: StepName, *, detail: str | None) -> Job:
    def finish(job: Job) -> None:
        step = job.step(name)
        step.status, step.completed_at = StepStatus.COMPLETED, utcnow()
        step.detail = detail
        job.heartbeat_at = step.completed_at

    finished = jobs.update(job_id, finish)
    if finished is None:
        raise JobGone(job_id)
    return finished


def advance(jobs: JobStore, metrics: MetricsRecorder, job_id: str, *, done: StepName,
            detail: str | None, start: StepName, known: Job | None = None,
            earlier: StepDone | None = None, at: datetime | None = None,
            text: str | None = None) -> Job:
    """One transaction: `done` completed with its detail and its duration observed, `start`
    in progress from the same instant (a follower sees no moment between two steps). With
    `earlier`, the step before `done` that ended without a write of its own: completed at its
    time, `done` started then (the worker's load_history, written with build_context).
    `at`: when `done` ended, if before this write; `text`: the text so far, in the same write
    (the worker writes generate's start with the first streamed chunk)."""
    def move(job: Job) -> None:
        now = at or utcnow()
        if earlier is not None:
            before = job.step(earlier.name)
            before.status, before.completed_at = StepStatus.COMPLETED, earlier.at
            before.detail = earlier.detail
            job.step(done).started_at = earlier.at
        finished, started = job.step(done), job.step(start)
        finished.status, finished.completed_at, finished.detail = StepStatus.COMPLETED, now, detail
        started.status, started.started_at = StepStatus.IN_PROGRESS, now
        job.heartbeat_at = utcnow()
        if text is not None:
            job.partial_reply = text

    def observe(pipe: Pipeline, job: Job) -> None:
        for name in ([earlier.name] if earlier is not None else []) + [done]:
            finished = job.step(name)
            if finished.started_at and finished.completed_at:
                metrics.observe("step_duration",
                                (finished.completed_at - finished.started_at).total_seconds(),
                                name.value, pipe=pipe)

    moved = jobs.update(job_id, move, after=observe, known=known)
    if moved is None:
        raise JobGone(job_id)
    return moved


def show_text(jobs: JobStore, job_id: str, whole: str, *,
              known: Job | None = None) -> Job | None:
    """The whole text so far (not a delta): a write repeated after a lost reply from Redis
    can never duplicate text. Returns the job as written (`known` when there was nothing to
    write; None without `known`)."""
    def show(job: Job) -> None:
        if job.partial_reply == whole:
            raise Skip
        job.partial_reply = whole
        job.heartbeat_at = utcnow()

    if known is not None and known.partial_reply == whole:
        return known
    shown = jobs.update(job_id, show, known=known)
    if shown is None and ended(jobs, job_id):
        raise JobGone(job_id)
    return shown if shown is not None else known


def ended(jobs: JobStore, job_id: str) -> bool:
    job = jobs.find(job_id)
    return job is None or job.status.is_final
