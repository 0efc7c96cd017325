"""Plain data: jobs, their steps, their errors. Statuses follow OpenAI's background responses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from mysisterdb.errors import ErrorCode

__all__ = ["ErrorCode", "Job", "JobError", "JobStatus", "Step", "StepName", "StepStatus"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


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

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (timestamps ISO 8601 UTC)."""
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "status": self.status.value,
            "sequence": self.sequence,
            "steps": [
                {"name": s.name, "status": s.status.value, "started_at": iso(s.started_at),
                 "completed_at": iso(s.completed_at), "detail": s.detail}
                for s in self.steps
            ],
            "partial_reply": self.partial_reply,
            "reply": self.reply,
            "error": self.error.model_dump(mode="json") if self.error else None,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
        }


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
