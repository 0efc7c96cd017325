"""Value types shared by the context library: stored messages, prompt turns, summaries."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

ROLES = ("user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    """One stored chat message; `tokens` is counted once, when the message is stored."""

    seq: int
    role: str
    text: str
    tokens: int
    created_at: str
    job_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if self.tokens < 0:
            raise ValueError("tokens must be >= 0")

    def to_json(self) -> str:
        return json.dumps(
            {"seq": self.seq, "role": self.role, "text": self.text, "tokens": self.tokens,
             "created_at": self.created_at, "job_id": self.job_id},
            ensure_ascii=False, separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Message:
        data: dict[str, Any] = json.loads(raw)
        job_id = data.get("job_id")
        return cls(seq=int(data["seq"]), role=str(data["role"]), text=str(data["text"]),
                   tokens=int(data["tokens"]), created_at=str(data["created_at"]),
                   job_id=None if job_id is None else str(job_id))


@dataclass(frozen=True, slots=True)
class Turn:
    """One entry of Gemini's `contents`: role is "user" or "model"."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class Summary:
    """Running summary of the conversation up to and including `covers_up_to_seq`."""

    text: str
    covers_up_to_seq: int
    tokens: int


@dataclass(frozen=True, slots=True)
class ScoredMessage:
    """A recalled older message and its relevance to the new message (0..1)."""

    message: Message
    score: float
    # A newer message on the same subject ranked above this one: recall this one only
    # if that one is recalled too (an old PIN alone would mislead).
    superseded_by: int | None = None


# The one rule tying turns to seqs: turn t holds the user's message at seq 2t-1 and its
# reply at seq 2t, so the history reads user, reply, user, reply even when the user typed
# ahead, and a failed turn leaves only its reply slot empty.


def user_seq(turn: int) -> int:
    return 2 * turn - 1


def reply_seq(turn: int) -> int:
    return 2 * turn


def turn_of(seq: int) -> int:
    return (seq + 1) // 2


def is_user_seq(seq: int) -> bool:
    return seq % 2 == 1
