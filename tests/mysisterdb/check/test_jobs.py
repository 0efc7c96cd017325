"""check on job records and their indexes: stale jobs ended by the reaper, indexes repaired."""

from __future__ import annotations

from datetime import timedelta

import redis

from core import keys
from core.incidents import IncidentLog
from core.jobs import JobStore
from core.models import JobStatus, utcnow
from mysisterdb.check import CheckConfig, Kind, new_run
from mysisterdb.check.jobs import check_job_indexes
from tests.mysisterdb.check.plant import (
    HARD_LIMIT_S,
    check,
    conversation,
    kinds,
    problems,
    store_turn,
)


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
    assert incident.action.startswith("失敗として終了させた（mysisterdb check --repair）")
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


def test_a_job_that_vanished_during_the_check_is_never_put_back_in_an_index(
    redis_client: redis.Redis,
) -> None:
    snapshot = store_turn(redis_client, "a", 1, reply=False, status=JobStatus.QUEUED,
                          at=utcnow())  # as the scan read it; then its record expires
    redis_client.delete(keys.job(snapshot.id))
    redis_client.zrem(keys.active_jobs(), snapshot.id)  # still in the conversation's line
    run = new_run(redis_client, CheckConfig(repair=True, hard_limit_s=HARD_LIMIT_S))
    check_job_indexes(run, snapshot)
    assert run.findings == []  # the snapshot is not the truth once the record is gone
    assert JobStore(redis_client).active_ids() == []
    found = problems(redis_client, repair=True)  # the line's entry is the line check's
    assert [(f.kind, f.job_id, f.repaired) for f in found] == [
        (Kind.ACTIVE_SET, snapshot.id, True)]
    assert JobStore(redis_client).line("a") == [] and JobStore(redis_client).active_ids() == []
