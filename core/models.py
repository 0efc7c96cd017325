"""Plain data: jobs, their steps, their errors. Statuses follow OpenAI's background responses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from core.errors import ErrorCode
from core.states import JobKind, JobStatus

__all__ = ["ErrorCode", "Job", "JobError", "JobKind", "JobStatus", "Step", "StepName", "StepStatus"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StepStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class StepName(StrEnum):
    LOAD_HISTORY = "load_history"
    BUILD_CONTEXT = "build_context"
    GENERATE = "generate"
    SAVE = "save"


STEP_NAMES = tuple(StepName)


class JobError(BaseModel):
    code: ErrorCode
    message: str


class Step(BaseModel):
    name: str
    status: StepStatus = StepStatus.PENDING
    started_at: datetime | None = None
    completed_at: datetime | None = None
    detail: str | None = None


class Job(BaseModel):
    id: str
    conversation_id: str
    turn: int
    status: JobStatus = JobStatus.QUEUED
    steps: list[Step] = Field(default_factory=lambda: [Step(name=n) for n in STEP_NAMES])
    partial_reply: str = ""
    reply: str | None = None
    error: JobError | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    attempts: int = 0
    input_preview: str = ""
    worker_pid: int | None = None
    write_id: str = ""  # stamp of the last write, to recognise our own after a lost reply
    sequence: int = 0  # grows with every write: clients follow a job by it
    retry_of: str | None = None  # the failed, incomplete or cancelled job this one retries
    owner: str | None = None  # the person whose conversation it is (None: from before owners)
    kind: JobKind = JobKind.REPLY
    continues: str = ""  # a continue job's starting text: its reply is this plus what it adds
    # Set by the lifecycle's end on the returned object only; never stored.
    previous_status: JobStatus | None = Field(default=None, exclude=True)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def current_step(self) -> str | None:
        """The step that was running (or next to run) when the job stopped."""
        for s in self.steps:
            if s.status in (StepStatus.IN_PROGRESS, StepStatus.PENDING, StepStatus.FAILED):
                return s.name
        return None


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
