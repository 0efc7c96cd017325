"""What one conversation has stored, read as it is (unparsed members included), through
the history store and the job store; and the rule a stored member's seq must follow."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from redis import Redis

from context.types import Message, is_user_seq, turn_of
from mysisterdb.check.findings import Run


@dataclass
class Member:
    """One zset member: its raw bytes, its score, and the message if it is readable."""

    raw: bytes
    score: float
    message: Message | None
    problem: str = ""

    @property
    def seq(self) -> int:
        return int(self.score)

    @property
    def turn(self) -> int:
        return turn_of(self.seq)


@dataclass
class ConvState:
    cid: str
    members: list[Member]
    counter: int
    jobs_by_turn: dict[int, str]
    summary_seq: int | None

    @property
    def unreadable(self) -> list[Member]:
        return [m for m in self.members if m.message is None]

    def readable(self) -> list[tuple[Member, Message]]:
        return [(m, m.message) for m in self.members if m.message is not None]

    def by_seq(self) -> dict[int, list[Member]]:
        grouped: dict[int, list[Member]] = defaultdict(list)
        for member in self.members:
            grouped[member.seq].append(member)
        return grouped

    @property
    def turns(self) -> list[int]:
        return sorted({m.turn for m in self.members})

    def missing_turns(self) -> list[int]:
        turns = self.turns
        if not turns:
            return []
        present = set(turns)
        return [t for t in range(turns[0], turns[-1] + 1) if t not in present]


def load_conversation(run: Run, cid: str, *, client: Redis | None = None) -> ConvState:
    """Everything check needs of one conversation; `client` may be a WATCHing pipeline."""
    members = [Member(raw, score, *read_member(raw))
               for raw, score in run.history.raw_members(cid, client=client)]
    return ConvState(cid=cid, members=members,
                     counter=run.jobs.turn_counter(cid, client=client),
                     jobs_by_turn=run.jobs.turn_map(cid, client=client),
                     summary_seq=run.history.summary_seq(cid, client=client))


def read_member(raw: bytes) -> tuple[Message | None, str]:
    """The message, or None and why it cannot be read."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # bad JSON or bad UTF-8
        return None, f"not JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    tokens = data.get("tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return None, f"no valid token count (tokens={tokens!r})"
    try:
        return Message.from_json(raw), ""
    except (KeyError, ValueError, TypeError) as exc:
        return None, f"not a message ({type(exc).__name__}: {exc})"


def seq_problem(score: float, message: Message) -> str | None:
    """What is wrong with a message's seq where it is stored, or None."""
    if score != int(score) or message.seq != int(score):
        return f"member says seq {message.seq} but is stored at score {score:g}"
    if message.seq < 1:
        return f"seq {message.seq} is below 1"
    if (message.role == "user") != is_user_seq(message.seq):
        return f"{message.role} message at seq {message.seq} (user: odd 2t-1, reply: even 2t)"
    return None
