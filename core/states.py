"""Every state a job and a turn can be in, what each means, and what may follow: declared once.

The lifecycle asks `check_transition` before it writes a status; the API serves
`states_document()` to the page (`GET /api/states`), so the page learns which states are
final and which actions a turn offers from here, not from its own copy.

    job:   queued ──claim──▶ in_progress ──▶ completed
             │                   ├──────────▶ failed      (an error; no text kept)
             │                   ├──────────▶ incomplete  (an error or a stop after some text)
             ├──expired──▶ failed └─cancel──▶ cancelled
             └──cancel──▶ cancelled

    turn:  the state of its newest job, except that a turn whose reply is stored and whose
           newest job has ended is `completed` (a failed regenerate keeps the reply it had),
           and `unknown` when neither a reply nor a job record is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Statuses follow OpenAI's background responses."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"

    @property
    def is_final(self) -> bool:
        return JOB_STATES[self].final

    @property
    def is_retryable(self) -> bool:
        """Ended without a reply: the turn can be sent again (POST /api/jobs/{id}/retry)."""
        return JOB_STATES[self].retryable


class JobKind(StrEnum):
    """What a job writes: a turn's first reply, another reply beside it, or more of it."""

    REPLY = "reply"
    REGENERATE = "regenerate"
    CONTINUE = "continue"


class TurnState(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    UNKNOWN = "unknown"  # no reply, and the job record outlived its lifetime


class Action(StrEnum):
    STOP = "stop"  # POST /api/jobs/{id}/cancel
    RETRY = "retry"  # POST /api/jobs/{id}/retry
    REGENERATE = "regenerate"  # POST .../turns/{turn}/regenerate
    CHOOSE = "choose"  # PUT .../turns/{turn}/chosen (when there are alternatives)
    EDIT = "edit"  # PUT .../turns/{turn}/message
    CONTINUE = "continue"  # POST .../turns/{turn}/continue
    BRANCH = "branch"  # POST .../branch


@dataclass(frozen=True)
class JobState:
    final: bool
    retryable: bool
    label: str  # what the page says of a turn in this state


JOB_STATES: dict[JobStatus, JobState] = {
    JobStatus.QUEUED: JobState(final=False, retryable=False, label="順番待ち"),
    JobStatus.IN_PROGRESS: JobState(final=False, retryable=False, label="生成中"),
    JobStatus.COMPLETED: JobState(final=True, retryable=False, label="完了"),
    JobStatus.FAILED: JobState(final=True, retryable=True, label="失敗しました"),
    JobStatus.CANCELLED: JobState(final=True, retryable=True, label="停止しました"),
    JobStatus.INCOMPLETE: JobState(final=True, retryable=True, label="途中で止まりました"),
}

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.COMPLETED, JobStatus.FAILED,
                                      JobStatus.INCOMPLETE, JobStatus.CANCELLED}),
    **{s: frozenset() for s in JobStatus if JOB_STATES[s].final},
}

# What a turn in each state offers. Actions in NEWEST_ONLY are offered on the conversation's
# newest turn only, as SillyTavern does: changing an older turn would leave the later replies
# answering words that are no longer there (edit an older turn by branching from it).
TURN_ACTIONS: dict[TurnState, frozenset[Action]] = {
    TurnState.QUEUED: frozenset({Action.STOP}),
    TurnState.IN_PROGRESS: frozenset({Action.STOP}),
    TurnState.COMPLETED: frozenset({Action.REGENERATE, Action.CHOOSE, Action.EDIT,
                                    Action.CONTINUE, Action.BRANCH}),
    TurnState.INCOMPLETE: frozenset({Action.RETRY, Action.CONTINUE, Action.EDIT}),
    TurnState.FAILED: frozenset({Action.RETRY, Action.EDIT}),
    TurnState.CANCELLED: frozenset({Action.RETRY, Action.EDIT}),
    TurnState.UNKNOWN: frozenset({Action.EDIT}),
}
NEWEST_ONLY = frozenset({Action.REGENERATE, Action.CHOOSE, Action.EDIT, Action.CONTINUE})
# What the page says under a turn that ended without a reply (no entry: nothing to say).
# A quiet ending is the person's own doing (a stop): shown subdued, without an error.
TURN_ENDINGS: dict[TurnState, str] = {
    TurnState.FAILED: "返事を作れませんでした。",
    TurnState.CANCELLED: "停止しました。",
    TurnState.INCOMPLETE: "返事が途中で止まりました。",
    TurnState.UNKNOWN: "この返事の記録は残っていません。",
}
QUIET_ENDINGS = frozenset({TurnState.CANCELLED})
TURN_LABELS: dict[TurnState, str] = {
    **{TurnState(s.value): JOB_STATES[s].label for s in JobStatus},
    TurnState.UNKNOWN: "記録が残っていません",
}


class IllegalTransition(RuntimeError):
    """A bug, never a user's error: the lifecycle asked for a change the table forbids."""


def check_transition(old: JobStatus, new: JobStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"a job cannot go from {old.value} to {new.value}")


def turn_state(*, has_reply: bool, job_status: JobStatus | None) -> TurnState:
    if job_status is not None and not job_status.is_final:
        return TurnState(job_status.value)
    if has_reply:
        return TurnState.COMPLETED
    return TurnState(job_status.value) if job_status is not None else TurnState.UNKNOWN


def turn_actions(state: TurnState, *, newest: bool, alternatives: int) -> list[Action]:
    """The actions a turn offers, in the order the page shows them."""
    offered = TURN_ACTIONS[state] - (frozenset() if newest else NEWEST_ONLY)
    if alternatives < 2:
        offered -= {Action.CHOOSE}
    return [a for a in Action if a in offered]


def allows(state: TurnState, action: Action, *, newest: bool, alternatives: int = 0) -> bool:
    return action in turn_actions(state, newest=newest, alternatives=alternatives)


def states_document() -> dict[str, Any]:
    """What the page needs to know about states (GET /api/states)."""
    return {
        "job_states": {s.value: {"final": JOB_STATES[s].final,
                                 "retryable": JOB_STATES[s].retryable,
                                 "label": JOB_STATES[s].label} for s in JobStatus},
        "turn_states": {t.value: {"label": TURN_LABELS[t],
                                  "ending": TURN_ENDINGS.get(t), "quiet": t in QUIET_ENDINGS,
                                  "actions": [a.value for a in Action if a in TURN_ACTIONS[t]]}
                        for t in TurnState},
        "newest_only": [a.value for a in Action if a in NEWEST_ONLY],
        "actions": [a.value for a in Action],
    }
