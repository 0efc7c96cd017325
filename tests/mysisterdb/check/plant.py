"""Planting data as the service leaves it (and problems in it) for the check tests."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from typing import Any

import redis

from context.tokens import count_tokens
from context.types import Message
from core import keys
from core.history import history_store
from core.jobs import JobStore
from core.models import Job, JobStatus, iso, utcnow
from mysisterdb.check import CheckConfig, Finding, find_problems, run_check

HARD_LIMIT_S = 6.0
LONG_AGO = utcnow() - timedelta(hours=1)


def store_turn(client: redis.Redis, cid: str, turn: int, *, reply: bool = True,
               status: JobStatus = JobStatus.COMPLETED, at: datetime = LONG_AGO) -> Job:
    """One turn as ChatService and the worker leave it: job, user message, reply."""
    job = Job(id=f"{cid}-job{turn}", conversation_id=cid, turn=turn, status=status,
              created_at=at, started_at=None if status is JobStatus.QUEUED else at,
              completed_at=at if status.is_final else None, input_preview=f"{cid} 質問{turn}")
    with client.pipeline(transaction=True) as pipe:
        JobStore.create(pipe, job)
        JobStore.follow_status(pipe, job)  # as the lifecycle leaves the indexes
        pipe.execute()
    history = history_store(client)
    history.append(cid, message(2 * turn - 1, "user", user_text(cid, turn), job.id, at))
    if reply:
        history.append(cid, message(2 * turn, "assistant", reply_text(cid, turn), job.id, at))
    client.sadd(keys.conversations(), cid)
    client.set(keys.conv_turn(cid), max(turn, int(client.get(keys.conv_turn(cid)) or 0)))
    return job


def message(seq: int, role: str, text: str, job_id: str | None, at: datetime) -> Message:
    return Message(seq=seq, role=role, text=text, tokens=count_tokens(text),
                   created_at=iso(at) or "", job_id=job_id)


def user_text(cid: str, turn: int) -> str:
    return f"{cid} の質問その{turn}: 枡元さんの誕生日{turn}"


def reply_text(cid: str, turn: int) -> str:
    return f"{cid} への返事その{turn}"


def conversation(client: redis.Redis, cid: str, turns: int) -> list[Job]:
    return [store_turn(client, cid, t) for t in range(1, turns + 1)]


def problems(client: redis.Redis, *, repair: bool = False) -> list[Finding]:
    return find_problems(redis=client, config=CheckConfig(repair=repair, hard_limit_s=HARD_LIMIT_S))


def check(client: redis.Redis, *, repair: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(redis=client, repair=repair, hard_limit_s=HARD_LIMIT_S, out=out)
    return code, out.getvalue()


def stored(client: redis.Redis, cid: str) -> list[tuple[int, bytes]]:
    members: list[Any] = list(client.zrange(keys.conv_messages(cid), 0, -1, withscores=True))
    return [(int(score), raw) for raw, score in members]


def texts(client: redis.Redis, cid: str) -> list[str]:
    return [json.loads(raw)["text"] for _, raw in stored(client, cid)]


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]
