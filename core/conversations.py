"""Reading conversations for clients: the history as turns with their state, and the list of
conversations by last activity. Read-only: every write is the lifecycle's.

A turn t is the user's message (seq 2t-1), then its reply (seq 2t) or the job of the turn
(`msdb:conv:{cid}:jobs`, the newest attempt after a retry): still running, or ended
without a reply (failed, incomplete, cancelled).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from context.redis_store import RedisHistoryStore
from context.types import Message, reply_seq, turn_of, user_seq
from core import alternatives, keys
from core.alternatives import Alternatives
from core.models import Job
from core.redis_client import to_str
from core.states import Action, TurnState, turn_actions, turn_state

MAX_TURNS = 100  # per page of history
MAX_CONVERSATIONS = 100  # per page of the conversation list
TITLE_CHARS = 30
NO_END = sys.maxsize


@dataclass(frozen=True)
class TurnView:
    turn: int
    user: Message
    reply: Message | None
    job: Job | None
    newest: bool = False  # the conversation's last turn (some actions are offered there only)
    alternatives: Alternatives | None = None

    @property
    def state(self) -> TurnState:
        return turn_state(has_reply=self.reply is not None,
                          job_status=self.job.status if self.job else None)

    @property
    def reply_count(self) -> int:
        return len(self.alternatives.replies) if self.alternatives else int(self.reply is not None)

    @property
    def chosen(self) -> int:
        return self.alternatives.chosen if self.alternatives else 0

    @property
    def actions(self) -> list[Action]:
        return turn_actions(self.state, newest=self.newest, alternatives=self.reply_count)


@dataclass(frozen=True)
class TurnPage:
    turns: list[TurnView]
    has_more_before: bool
    has_more_after: bool


@dataclass(frozen=True)
class ConversationView:
    id: str
    title: str
    message_count: int
    last_activity: datetime
    job_running: bool


def shorten(text: str, limit: int = TITLE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def activity_cursor(ts: datetime) -> str:
    """An exclusive Redis score bound for `before`: activity scores are whole milliseconds."""
    return f"({round(ts.timestamp() * 1000) / 1000:.3f}"


class ConversationReader:
    def __init__(self, *, client: redis.Redis, history: RedisHistoryStore) -> None:
        self.redis = client
        self.history = history

    # -- history ------------------------------------------------------------------------

    def turns(self, cid: str, *, limit: int, before: int | None = None,
              after: int | None = None) -> TurnPage:
        """Up to `limit` turns, oldest first: the newest ones, the last ones whose user seq is
        below `before`, or (with `after`) the first ones whose user seq is above `after`."""
        # Whole turns: before=S keeps turns with user seq < S, so messages up to 2*(S//2).
        upper = 2 * (before // 2) + 1 if before is not None else NO_END
        if after is not None:
            lower = user_seq(turn_of(after) + 1) - 1
            found = self.history.between(cid, after_seq=lower, before_seq=upper, limit=2 * limit)
            groups = group_turns(found)[:limit]
        else:
            lower = 0
            found = self.history.before(cid, before_seq=upper, limit=2 * limit)
            groups = group_turns(found)[-limit:]
        # 2*limit messages hold at least `limit` whole turns unless a turn was cut at the far
        # end, and then there are more than `limit` groups: the cut one is dropped above.
        views = self._with_jobs(cid, groups)
        first = views[0].user.seq if views else lower + 1
        last = reply_seq(views[-1].turn) if views else upper - 1
        return TurnPage(
            turns=views,
            has_more_before=bool(self.history.before(cid, before_seq=first, limit=1)),
            has_more_after=bool(self.history.between(cid, after_seq=last, before_seq=NO_END,
                                                     limit=1)))

    def _with_jobs(self, cid: str, groups: list[tuple[int, Message, Message | None]],
                   ) -> list[TurnView]:
        if not groups:
            return []
        job_ids = self.redis.hmget(keys.conv_jobs(cid), [str(t) for t, _, _ in groups])
        records = self._jobs([to_str(j) if j else None for j in job_ids])
        newest = int(self.redis.get(keys.conv_turn(cid)) or 0)
        alts = alternatives.read_many(self.redis, cid, [t for t, _, _ in groups])
        return [TurnView(turn=t, user=user, reply=reply, job=job, newest=t == newest,
                         alternatives=alts.get(t))
                for (t, user, reply), job in zip(groups, records, strict=True)]

    def _jobs(self, job_ids: list[str | None]) -> list[Job | None]:
        present = [j for j in job_ids if j]
        raws: dict[str, Any] = dict(zip(present, self.redis.mget([keys.job(j) for j in present]),
                                        strict=True)) if present else {}
        return [Job.model_validate_json(raw) if j and (raw := raws.get(j)) else None
                for j in job_ids]

    # -- the list -----------------------------------------------------------------------

    def newest(self, *, limit: int, before: datetime | None = None,
               person: str | None = None) -> list[ConversationView]:
        """Conversations by last activity, newest first; `before` pages on (exclusive).
        With `person`: only that person's (else everyone's, for operators)."""
        top = activity_cursor(before) if before is not None else "+inf"
        index = (keys.person_conversations(person) if person is not None
                 else keys.conversations_by_activity())
        rows: list[Any] = self.redis.zrevrangebyscore(
            index, top, "-inf", start=0, num=limit, withscores=True)
        with self.redis.pipeline(transaction=False) as pipe:
            for raw, _ in rows:
                cid = to_str(raw)
                pipe.zrange(keys.conv_messages(cid), 0, 0)
                pipe.zcard(keys.conv_messages(cid))
                pipe.zcard(keys.conv_active(cid))
            answers = pipe.execute()
        views = []
        for i, (raw, score) in enumerate(rows):
            first, count, live = answers[3 * i:3 * i + 3]
            views.append(ConversationView(
                id=to_str(raw), title=title(first), message_count=int(count),
                last_activity=datetime.fromtimestamp(float(score), UTC),
                job_running=int(live) > 0))
        return views


def title(first: list[Any]) -> str:
    if not first:
        return ""
    message = Message.from_json(first[0])
    return shorten(message.text) if message.role == "user" else ""


def group_turns(messages: list[Message]) -> list[tuple[int, Message, Message | None]]:
    """(turn, user message, reply) in order; a reply without its user message is left out
    (cut at the edge of a page, or an orphan that `mysisterdb check` reports)."""
    users: dict[int, Message] = {}
    replies: dict[int, Message] = {}
    for m in messages:
        (users if m.role == "user" else replies)[turn_of(m.seq)] = m
    return [(t, users[t], replies.get(t)) for t in sorted(users)]
