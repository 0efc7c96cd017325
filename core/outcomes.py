"""The plain values of a job's life and the pure rules over them: how a job ends (`Outcome`
applied to a job), whom an end hands the line to, when a job is surely dead (`Limits`).

No Redis here: `core.lifecycle` reads and writes, this module decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from context.types import Message
from core.errors import ErrorCode
from core.models import Job, JobError, JobStatus, StepName, StepStatus, utcnow
from core.redis_client import to_str
from core.settings import Settings
from core.states import check_transition


class JobGone(Exception):
    """The job ended under us (cancelled, or ended elsewhere): stop working on it."""


@dataclass(frozen=True)


class Limits:
    """When a job is surely dead, and how soon a lost publish is repeated."""

    hard_limit_s: float
    queue_timeout_s: float
    grace_s: float = 2.0
    outbox_grace_s: float = 2.0
    stale_reservation_s: float = 10.0  # reserved, never started: its worker lost it
    lost_message_s: float = 10.0  # sent, not waiting, not reserved, not started: lost

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(hard_limit_s=settings.task_time_limit, queue_timeout_s=settings.queue_timeout_s,
                   outbox_grace_s=settings.outbox_grace_s)


@dataclass(frozen=True)
class StepDone:
    """The step a completed job finished last (generate), given to the end so that one
    transaction finishes it, runs the save and ends the job."""

    name: StepName
    detail: str | None
    at: datetime


@dataclass(frozen=True)


class Outcome:
    """How a job ends. A failure becomes `incomplete` if text was generated and kept."""

    status: JobStatus
    code: ErrorCode | None = None
    message: str | None = None  # more precise words than the code's (e.g. the HTTP status)
    reply: Message | None = None
    partial: str | None = None  # the text that arrived before a stream broke
    keep_partial: bool = True
    exception: str = ""
    action: str = ""
    last_step: StepDone | None = None

    @classmethod
    def completed(cls, reply: Message, *, generated: str | None = None,
                  last_step: StepDone | None = None) -> Outcome:
        """`generated`: the job's own text (the whole reply but a continue's start), written
        as its text so far in the same transaction: no last write of the streamed text."""
        return cls(status=JobStatus.COMPLETED, reply=reply, partial=generated,
                   last_step=last_step)

    @classmethod
    def failed(cls, code: ErrorCode, *, exception: str, action: str, message: str | None = None,
               partial: str | None = None, keep_partial: bool = True) -> Outcome:
        return cls(status=JobStatus.FAILED, code=code, message=message, partial=partial,
                   keep_partial=keep_partial, exception=exception, action=action)

    @classmethod
    def cancelled(cls) -> Outcome:
        return cls(status=JobStatus.CANCELLED, action="cancelled by the user")


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    GONE = "gone"  # no such job (expired record)
    FINAL = "final"  # already ended (cancelled, reaped)
    DUPLICATE = "duplicate"  # started before: a second delivery never runs it again
    NOT_HEAD = "not_head"  # an earlier turn is unfinished; the hand-over dispatches it
    EXPIRED = "expired"  # queued past the queue timeout: ended instead


@dataclass(frozen=True)


class Claim:
    status: ClaimStatus
    job: Job | None = None


@dataclass(frozen=True)


class Submitted:
    job: Job
    created: bool
    # Whether the submit put it in the outbox (the head of its line); None: not known here
    # (a resend, or a transaction recovered after a lost reply): Redis is asked.
    head: bool | None = None


@dataclass(frozen=True)


class Deleted:
    """What deleting a conversation removed; `stopped` were running (their tasks may be
    terminated)."""

    jobs: int
    stopped: list[str]


def idempotency_value(job_id: str, digest: str | None) -> str:
    return f"{job_id}:{digest}" if digest else job_id


def parse_idempotency_value(raw: bytes | str) -> tuple[str, str | None]:
    """(job id, request digest); keys stored before digests existed carry none."""
    job_id, _, digest = to_str(raw).partition(":")
    return job_id, digest or None


@dataclass


class SweepReport:
    published: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


def apply_outcome(job: Job, outcome: Outcome) -> None:
    now = utcnow()
    if outcome.partial is not None:  # what this job generated; a continue's follows its start
        job.partial_reply = job.continues + outcome.partial
    status = outcome.status
    # Incomplete: this job wrote text of its own before it failed (a continue starts with
    # the text it continues, which is not its own).
    if (status is JobStatus.FAILED and outcome.keep_partial
            and len(job.partial_reply) > len(job.continues)):
        status = JobStatus.INCOMPLETE
    check_transition(job.status, status)
    if outcome.last_step is not None and status is JobStatus.COMPLETED:
        finish_last(job, outcome.last_step)
    job.status, job.completed_at = status, now
    job.error = (JobError(code=outcome.code, message=outcome.message or outcome.code.message)
                 if outcome.code is not None else None)
    if outcome.reply is not None:
        job.reply = outcome.reply.text
        job.step(StepName.SAVE).detail = f"reply seq {outcome.reply.seq}"
    for step in job.steps:
        if step.status is StepStatus.IN_PROGRESS:
            step.status, step.completed_at = step_end_status(status), now
        elif step.status is StepStatus.PENDING:
            step.status = StepStatus.SKIPPED
    if status is JobStatus.CANCELLED and StepStatus.CANCELLED not in {s.status for s in job.steps}:
        # Cancelled before a step started: the step it was waiting for says so.
        waiting = next((s for s in job.steps if s.status is StepStatus.SKIPPED), None)
        if waiting is not None:
            waiting.status = StepStatus.CANCELLED


def finish_last(job: Job, done: StepDone) -> None:
    """The last step completed when the pipeline handed its result over; the save starts
    then (and completes with the end)."""
    step = job.step(done.name)
    step.status, step.completed_at, step.detail = StepStatus.COMPLETED, done.at, done.detail
    save = job.step(StepName.SAVE)
    if save.status is StepStatus.PENDING:
        save.status, save.started_at = StepStatus.IN_PROGRESS, done.at


def next_head(job: Job, first_two: list[str]) -> str | None:
    """Whom the end of `job` hands the line to, given the line's first two members.

    The head hands over to the second. A running job that is not the head had a retried
    earlier turn put in front of it while it ran; that retry waits for this end."""
    if first_two[:1] == [job.id]:
        return first_two[1] if len(first_two) > 1 else None
    if job.status is JobStatus.IN_PROGRESS and first_two:
        return first_two[0]
    return None


def step_end_status(status: JobStatus) -> StepStatus:
    if status is JobStatus.COMPLETED:
        return StepStatus.COMPLETED
    return StepStatus.CANCELLED if status is JobStatus.CANCELLED else StepStatus.FAILED
