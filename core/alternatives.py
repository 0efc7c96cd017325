"""The replies of a regenerated turn: every one kept (up to `keys.max_alternatives`, the
oldest dropped), one chosen. The chosen reply is also the turn's message in the history, so
later prompts and recall see it alone; the others are stored, not remembered.

    msdb:conv:{cid}:alternatives  hash  turn -> {"chosen": k, "replies": [reply, ...]}

A turn with one reply has no entry: the history holds its only reply.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from context.types import Message
from core import keys
from core.redis_client import to_str


@dataclass(frozen=True)
class Reply:
    text: str
    tokens: int
    job_id: str | None
    created_at: str

    @classmethod
    def of(cls, message: Message) -> Reply:
        return cls(text=message.text, tokens=message.tokens, job_id=message.job_id,
                   created_at=message.created_at)

    def message(self, *, seq: int) -> Message:
        return Message(seq=seq, role="assistant", text=self.text, tokens=self.tokens,
                       created_at=self.created_at, job_id=self.job_id)


@dataclass(frozen=True)
class Alternatives:
    chosen: int
    replies: list[Reply] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps({"chosen": self.chosen, "replies": [asdict(r) for r in self.replies]},
                          ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: bytes | str) -> Alternatives:
        data: dict[str, Any] = json.loads(to_str(raw))
        return cls(chosen=int(data["chosen"]), replies=[Reply(**r) for r in data["replies"]])

    @property
    def current(self) -> Reply:
        return self.replies[self.chosen]


def added(existing: Alternatives | None, *, stored: Message | None, new: Message,
          limit: int = keys.max_alternatives) -> Alternatives:
    """`new` joins the turn's replies and is chosen; the oldest go past `limit`."""
    replies = list(existing.replies) if existing else ([Reply.of(stored)] if stored else [])
    replies.append(Reply.of(new))
    replies = replies[-limit:]
    return Alternatives(chosen=len(replies) - 1, replies=replies)


def with_current(existing: Alternatives, reply: Message) -> Alternatives:
    """The chosen reply replaced (a continue made it longer)."""
    replies = list(existing.replies)
    replies[existing.chosen] = Reply.of(reply)
    return Alternatives(chosen=existing.chosen, replies=replies)


def read(client: redis.Redis | Pipeline, conversation_id: str, turn: int) -> Alternatives | None:
    raw = client.hget(keys.conv_alternatives(conversation_id), str(turn))
    return Alternatives.loads(raw) if raw else None


def read_many(client: redis.Redis, conversation_id: str,
              turns: list[int]) -> dict[int, Alternatives]:
    if not turns:
        return {}
    raws = client.hmget(keys.conv_alternatives(conversation_id), [str(t) for t in turns])
    return {t: Alternatives.loads(raw) for t, raw in zip(turns, raws, strict=True) if raw}


def read_all(client: redis.Redis, conversation_id: str) -> dict[int, Alternatives]:
    raw = client.hgetall(keys.conv_alternatives(conversation_id))
    return {int(to_str(t)): Alternatives.loads(v) for t, v in raw.items()}


def write(pipe: Pipeline, conversation_id: str, turn: int, alternatives: Alternatives) -> None:
    pipe.hset(keys.conv_alternatives(conversation_id), str(turn), alternatives.dumps())


def forget(pipe: Pipeline, conversation_id: str, turn: int) -> None:
    pipe.hdel(keys.conv_alternatives(conversation_id), str(turn))
