"""`mysisterdb check`: planted problems are found, repaired when safe, and never lose a message."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from context.tokens import count_tokens
from context.types import Message, Summary
from mysisterdb import keys
from mysisterdb.check import CheckConfig, Finding, Kind, Renumber, find_problems, run_check
from mysisterdb.history import history_store
from mysisterdb.incidents import IncidentLog
from mysisterdb.jobs import JobStore
from mysisterdb.models import Job, JobStatus, iso, utcnow
from mysisterdb.redis_server import RedisServer

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


# -- clean data -------------------------------------------------------------------------------


def test_clean_data_has_no_findings_and_exits_0(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 3)
    store_turn(redis_client, "a", 4, reply=False, status=JobStatus.FAILED)  # no reply: no gap
    # After a reset the turn counter keeps going: turns 7-8 alone are fine, counter ahead too.
    store_turn(redis_client, "b", 7)
    store_turn(redis_client, "b", 8)
    redis_client.set(keys.conv_turn("b"), 9)
    store_turn(redis_client, "c", 1, reply=False, status=JobStatus.IN_PROGRESS, at=utcnow())
    assert problems(redis_client) == []
    code, out = check(redis_client)
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("check: 0 problems, 0 repaired")


# -- jobs ---------------------------------------------------------------------------------------


def test_stale_running_job_is_marked_failed_worker_lost(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 1)
    job = store_turn(redis_client, "a", 2, reply=False, status=JobStatus.IN_PROGRESS)

    found = problems(redis_client)
    assert kinds(found) == [Kind.STALE_JOB] and found[0].job_id == job.id
    assert not found[0].repaired
    code, out = check(redis_client)
    assert code == 1 and f"job={job.id}" in out and "check: 1 problems, 0 repaired" in out
    assert JobStore(redis_client).get(job.id).status is JobStatus.IN_PROGRESS  # looked only

    code, out = check(redis_client, repair=True)
    assert code == 0 and "check: 1 problems, 1 repaired" in out
    ended = JobStore(redis_client).get(job.id)
    assert ended.status is JobStatus.FAILED and ended.error is not None
    assert ended.error.code == "worker_lost"
    assert job.id not in JobStore(redis_client).active_ids()
    incident = IncidentLog(redis_client).newest(limit=1)[0]
    assert incident.job_id == job.id and incident.kind == "worker_lost"
    assert incident.action.startswith("marked failed by mysisterdb check --repair")
    assert check(redis_client)[0] == 0 and problems(redis_client) == []


def test_queued_job_gets_ten_hard_limits_before_it_counts_as_lost(
    redis_client: redis.Redis,
) -> None:
    waiting = store_turn(redis_client, "a", 1, reply=False, status=JobStatus.QUEUED,
                         at=utcnow() - timedelta(seconds=5 * HARD_LIMIT_S))
    lost = store_turn(redis_client, "b", 1, reply=False, status=JobStatus.QUEUED)
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.job_id, f.repaired) for f in found] == [(Kind.STALE_JOB, lost.id, True)]
    assert JobStore(redis_client).get(waiting.id).status is JobStatus.QUEUED
    ended = JobStore(redis_client).get(lost.id)
    assert ended.status is JobStatus.FAILED and ended.error and ended.error.code == "expired"


def test_active_set_out_of_step_with_job_records(redis_client: redis.Redis) -> None:
    done = store_turn(redis_client, "a", 1)
    running = store_turn(redis_client, "a", 2, reply=False, status=JobStatus.IN_PROGRESS,
                         at=utcnow())
    redis_client.zadd(keys.active_jobs(), {done.id: 1.0, "expired-job": 2.0})
    redis_client.zrem(keys.active_jobs(), running.id)
    found = problems(redis_client, repair=True)
    assert sorted((f.kind, f.job_id, f.repaired) for f in found) == [
        (Kind.ACTIVE_SET, done.id, True), (Kind.ACTIVE_SET, running.id, True),
        (Kind.ACTIVE_SET, "expired-job", True)]
    assert JobStore(redis_client).active_ids() == [running.id]
    assert problems(redis_client) == []


# -- sequences -------------------------------------------------------------------------------------


def test_gap_is_closed_by_renumbering_without_losing_a_message(redis_client: redis.Redis) -> None:
    jobs = conversation(redis_client, "a", 5)
    history = history_store(redis_client)
    history.set_summary("a", Summary(text="要約", covers_up_to_seq=8, tokens=2))
    redis_client.zremrangebyscore(keys.conv_messages("a"), 5, 6)  # turn 3 is gone
    kept = texts(redis_client, "a")

    found = problems(redis_client)
    assert kinds(found) == [Kind.GAP, Kind.INDEX]  # the index still points at seqs 5 and 6
    assert "missing turn(s) 3 " in found[0].detail
    assert stored(redis_client, "a")[4][0] == 7  # looking changed nothing

    code, out = check(redis_client, repair=True)
    assert code == 0, out
    assert texts(redis_client, "a") == kept
    assert [seq for seq, _ in stored(redis_client, "a")] == list(range(1, 9))
    moved = Message.from_json(stored(redis_client, "a")[4][1])
    assert (moved.seq, moved.text, moved.job_id) == (5, user_text("a", 4), jobs[3].id)
    assert JobStore(redis_client).job_id_for_turn("a", 3) == jobs[3].id
    assert JobStore(redis_client).job_id_for_turn("a", 4) == jobs[4].id
    assert JobStore(redis_client).job_id_for_turn("a", 5) is None
    assert JobStore(redis_client).get(jobs[4].id).turn == 4
    assert int(redis_client.get(keys.conv_turn("a")) or 0) == 4
    summary = history.get_summary("a")
    assert summary is not None and summary.covers_up_to_seq == 6  # still ends after old turn 4
    hits = history.search("a", query=user_text("a", 5), before_seq=100, limit=1, threshold=0.1)
    assert hits and hits[0].message.seq == 7 and hits[0].message.text == user_text("a", 5)
    assert check(redis_client)[0] == 0 and problems(redis_client) == []


def test_gap_is_left_alone_while_the_conversation_is_in_use(redis_client: redis.Redis) -> None:
    conversation(redis_client, "busy", 3)
    store_turn(redis_client, "busy", 4, reply=False, status=JobStatus.QUEUED, at=utcnow())
    redis_client.zremrangebyscore(keys.conv_messages("busy"), 3, 4)
    store_turn(redis_client, "recent", 1, at=utcnow())
    store_turn(redis_client, "recent", 3, at=utcnow())  # turn 2 never stored
    before = {cid: stored(redis_client, cid) for cid in ("busy", "recent")}

    gaps = [f for f in problems(redis_client, repair=True) if f.kind == Kind.GAP]
    assert [(f.conversation_id, f.repaired) for f in gaps] == [("busy", False), ("recent", False)]
    assert "is queued or running" in gaps[0].detail
    assert "last activity" in gaps[1].detail
    assert {cid: stored(redis_client, cid) for cid in ("busy", "recent")} == before
    assert check(redis_client, repair=True)[0] == 1


def test_reply_without_its_user_message_is_reported_never_dropped(
    redis_client: redis.Redis,
) -> None:
    conversation(redis_client, "a", 3)
    redis_client.zremrangebyscore(keys.conv_messages("a"), 3, 3)
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.repaired) for f in found] == [(Kind.ORPHAN_REPLY, False),
                                                     (Kind.INDEX, True)]
    assert reply_text("a", 2) in texts(redis_client, "a")
    assert check(redis_client)[0] == 1


def test_exact_copy_at_a_duplicate_seq_is_dropped(redis_client: redis.Redis) -> None:
    jobs = conversation(redis_client, "a", 3)
    copy = message(3, "user", user_text("a", 2), None, utcnow())  # same text, other bytes
    redis_client.zadd(keys.conv_messages("a"), {copy.to_json(): 3})

    found = problems(redis_client)
    assert kinds(found) == [Kind.DUPLICATE_SEQ] and "seq 3 has 2 members" in found[0].detail
    assert check(redis_client, repair=True)[0] == 0
    members = [raw for seq, raw in stored(redis_client, "a") if seq == 3]
    assert [Message.from_json(raw).job_id for raw in members] == [jobs[1].id]
    assert problems(redis_client) == []


def test_different_messages_at_one_seq_are_both_kept(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 2)
    other = message(3, "user", "別の話", None, LONG_AGO)
    redis_client.zadd(keys.conv_messages("a"), {other.to_json(): 3})
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.repaired) for f in found] == [(Kind.DUPLICATE_SEQ, False)]
    assert "別の話" in texts(redis_client, "a") and user_text("a", 2) in texts(redis_client, "a")
    assert check(redis_client, repair=True)[0] == 1


def test_unreadable_members_are_reported_and_never_deleted(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 2)
    no_tokens = json.dumps({"seq": 5, "role": "user", "text": "トークン数なし",
                            "created_at": iso(LONG_AGO)}, ensure_ascii=False)
    redis_client.zadd(keys.conv_messages("a"), {b"{not json": 7})
    redis_client.zadd(keys.conv_messages("a"), {no_tokens: 5})
    redis_client.set(keys.conv_turn("a"), 4)

    for repair in (False, True, True):
        found = problems(redis_client, repair=repair)
        assert [(f.kind, f.repaired) for f in found] == [(Kind.UNREADABLE, False)] * 2
    assert "no valid token count" in found[0].detail and "not JSON" in found[1].detail
    members = [raw for _, raw in stored(redis_client, "a")]
    assert b"{not json" in members and no_tokens.encode() in members
    assert check(redis_client, repair=True)[0] == 1


def test_turn_counter_behind_is_raised(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 3)
    redis_client.set(keys.conv_turn("a"), 1)
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.repaired) for f in found] == [(Kind.TURN_BEHIND, True)]
    assert int(redis_client.get(keys.conv_turn("a")) or 0) == 3
    assert problems(redis_client) == []


def test_dangling_index_entry_is_rebuilt(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 3)
    reply = [raw for seq, raw in stored(redis_client, "a") if seq == 4][0]
    redis_client.zrem(keys.conv_messages("a"), reply)  # a missing reply is no gap

    found = problems(redis_client)
    assert kinds(found) == [Kind.INDEX] and "dangling postings" in found[0].detail
    assert check(redis_client, repair=True)[0] == 0
    assert history_store(redis_client).check_index("a").ok
    assert problems(redis_client) == []


@pytest.mark.parametrize(("seq", "expected"), [(1, 1), (4, 4), (5, 4), (6, 4), (7, 5),
                                               (10, 6), (13, 9), (20, 16)])
def test_renumber_maps_seqs_of_kept_and_vanished_turns(seq: int, expected: int) -> None:
    plan = Renumber.closing([1, 2, 4, 6])  # turns 3 and 5 vanished
    assert plan.seq(seq) == expected
    assert (plan.shift, plan.turn(3), plan.turn(6), plan.turn(9)) == (2, None, 4, 7)


# -- the real command ------------------------------------------------------------------------------


def test_cli_exits_1_on_a_problem_and_0_after_repair(
    redis_client: redis.Redis, redis_server: RedisServer,
) -> None:
    conversation(redis_client, "a", 2)
    store_turn(redis_client, "a", 3, reply=False, status=JobStatus.IN_PROGRESS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSISTERDB_")}
    env["MYSISTERDB_REDIS_URL"] = redis_server.url

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mysisterdb", "check", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    found = cli()
    assert found.returncode == 1, found.stderr
    assert "stale_job" in found.stdout and "check: 1 problems, 0 repaired" in found.stdout
    repaired = cli("--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "check: 1 problems, 1 repaired" in repaired.stdout
    clean = cli()
    assert clean.returncode == 0 and "check: 0 problems" in clean.stdout


def test_running_and_order_indexes_out_of_step(redis_client: redis.Redis) -> None:
    done = store_turn(redis_client, "a", 1)
    running = store_turn(redis_client, "a", 2, reply=False, status=JobStatus.IN_PROGRESS,
                         at=utcnow())
    redis_client.zadd(keys.conv_active("a"), {done.id: 1, "gone-job": 0})  # ended / vanished
    redis_client.zrem(keys.running_jobs(), running.id)
    redis_client.zadd(keys.running_jobs(), {done.id: 1.0})
    found = problems(redis_client, repair=True)
    assert sorted((f.job_id, f.repaired) for f in found) == sorted([
        (done.id, True), (done.id, True), ("gone-job", True), (running.id, True)])
    assert all(f.kind is Kind.ACTIVE_SET for f in found)
    jobs = JobStore(redis_client)
    assert jobs.line("a") == [running.id]
    assert redis_client.zrange(keys.running_jobs(), 0, -1) == [running.id.encode()]
    assert problems(redis_client) == []
