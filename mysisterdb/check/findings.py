"""What a check run finds, how it is configured, and what it carries from step to step."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from redis import Redis

from context.redis_store import RedisHistoryStore
from core.jobs import JobStore
from core.lifecycle import Lifecycle

QUEUED_LIMIT_FACTOR = 10
PREVIEW_CHARS = 40


class Kind(StrEnum):
    STALE_JOB = "stale_job"
    ACTIVE_SET = "active_set"
    BAD_JOB = "bad_job"
    UNREADABLE = "unreadable"
    BAD_SEQ = "bad_seq"
    DUPLICATE_SEQ = "duplicate_seq"
    GAP = "gap"
    ORPHAN_REPLY = "orphan_reply"
    TURN_BEHIND = "turn_behind"
    INDEX = "index"


@dataclass
class Finding:
    """One problem found; `repaired` once --repair fixed it."""

    kind: str
    detail: str
    conversation_id: str | None = None
    job_id: str | None = None
    repaired: bool = False

    def line(self) -> str:
        where = " ".join(part for part in (
            f"conv={self.conversation_id}" if self.conversation_id else "",
            f"job={self.job_id}" if self.job_id else "") if part)
        status = "REPAIRED" if self.repaired else "PROBLEM "
        return f"{status} {self.kind:<13} {where}: {self.detail}"


@dataclass(frozen=True)
class CheckConfig:
    repair: bool
    hard_limit_s: float
    grace_s: float = 2.0
    queued_limit_s: float | None = None  # None: QUEUED_LIMIT_FACTOR x hard limit
    quiet_s: float | None = None  # None: hard limit + grace

    @property
    def running_limit(self) -> timedelta:
        return timedelta(seconds=self.hard_limit_s + self.grace_s)

    @property
    def queued_limit(self) -> timedelta:
        bound = self.queued_limit_s
        return timedelta(seconds=QUEUED_LIMIT_FACTOR * self.hard_limit_s if bound is None
                         else bound)

    @property
    def quiet(self) -> timedelta:
        return self.running_limit if self.quiet_s is None else timedelta(seconds=self.quiet_s)


@dataclass
class Run:
    """One check run: the stores it goes through, and what it found so far."""

    redis: Redis
    config: CheckConfig
    jobs: JobStore
    history: RedisHistoryStore
    lifecycle: Lifecycle
    findings: list[Finding] = field(default_factory=list)
    live_jobs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    jobs_checked: int = 0
    conversations_checked: int = 0

    def found(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding


def preview(raw: bytes) -> str:
    """The start of a stored value, for a finding's detail."""
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…")
