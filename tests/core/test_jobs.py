"""JobStore against a real redis-server: the reads and repairs `mysisterdb check` goes
through (records as stored, index entries, the turn map and counter)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from core import keys
from core.jobs import JobStore
from core.models import Job, JobStatus, utcnow


def put(client: redis.Redis, cid: str, turn: int, *,
        status: JobStatus = JobStatus.COMPLETED) -> Job:
    at = utcnow() - timedelta(minutes=turn)
    started = None if status is JobStatus.QUEUED else at + timedelta(seconds=30)
    job = Job(id=f"{cid}-job{turn}", conversation_id=cid, turn=turn, status=status,
              created_at=at, started_at=started)
    with client.pipeline(transaction=True) as pipe:
        JobStore.create(pipe, job)
        JobStore.follow_status(pipe, job)
        pipe.execute()
    return job


def test_turn_map_and_counter_read_what_submit_stored(redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client)
    assert jobs.turn_map("c") == {} and jobs.turn_counter("c") == 0
    first, second = put(redis_client, "c", 1), put(redis_client, "c", 2)
    redis_client.hset(keys.conv_jobs("c"), "note", "not a turn")
    redis_client.set(keys.conv_turn("c"), 3)
    assert jobs.turn_map("c") == {1: first.id, 2: second.id}
    assert jobs.turn_counter("c") == 3
    with redis_client.pipeline() as pipe:
        pipe.watch(*jobs.turn_keys("c"))
        assert jobs.turn_map("c", client=pipe) == {1: first.id, 2: second.id}
        assert jobs.turn_counter("c", client=pipe) == 3


def test_raise_turn_counter_never_lowers_it(redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client)
    assert jobs.raise_turn_counter("c", 4) == 4 and jobs.turn_counter("c") == 4
    assert jobs.raise_turn_counter("c", 2) == 4 and jobs.turn_counter("c") == 4
    assert jobs.raise_turn_counter("c", 9) == 9 and jobs.turn_counter("c") == 9


def test_remap_turns_moves_turns_and_the_counter_in_the_callers_multi(
    redis_client: redis.Redis,
) -> None:
    jobs = JobStore(redis_client)
    one, _, five = put(redis_client, "c", 1), put(redis_client, "c", 3), put(redis_client, "c", 5)
    redis_client.set(keys.conv_turn("c"), 6)
    with redis_client.pipeline() as pipe:
        pipe.watch(*jobs.turn_keys("c"))
        pipe.multi()
        jobs.remap_turns(pipe, "c", unmap=[3, 5], mapping={2: five.id}, counter=3)
        assert jobs.turn_counter("c") == 6  # queued, not applied
        pipe.execute()
    assert jobs.turn_map("c") == {1: one.id, 2: five.id}
    assert jobs.turn_counter("c") == 3  # lowered: renumbering closed turns


@pytest.mark.parametrize("racing_key", ["counter", "map"])
def test_a_submit_racing_a_remap_aborts_it(redis_client: redis.Redis, racing_key: str) -> None:
    jobs = JobStore(redis_client)
    put(redis_client, "c", 1)
    with redis_client.pipeline() as pipe:
        pipe.watch(*jobs.turn_keys("c"))
        if racing_key == "counter":
            redis_client.incr(keys.conv_turn("c"))
        else:
            put(redis_client, "c", 2)
        pipe.multi()
        jobs.remap_turns(pipe, "c", unmap=[1], mapping={}, counter=0)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert 1 in jobs.turn_map("c")


def test_set_turn_moves_an_ended_job_and_stamps_the_write(redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client)
    job = put(redis_client, "c", 4)
    moved = jobs.set_turn(job.id, 3)
    assert moved is not None and moved.turn == 3
    stored = jobs.get(job.id)
    assert stored.turn == 3 and stored.status is JobStatus.COMPLETED
    assert stored.sequence == job.sequence + 1
    assert jobs.set_turn("gone", 1) is None


def test_records_are_read_as_stored_including_bad_and_gone_ones(
    redis_client: redis.Redis,
) -> None:
    jobs = JobStore(redis_client)
    made = [put(redis_client, f"c{i}", 1) for i in range(5)]
    redis_client.set(keys.job("bad"), b"{not json")
    scanned = dict(jobs.scan_records(batch=4))  # a full batch, then the rest
    assert sorted(scanned) == sorted([j.id for j in made] + ["bad"])
    assert scanned["bad"] == b"{not json"
    assert Job.model_validate_json(scanned[made[0].id] or b"") == made[0]
    ids = [made[1].id, "gone", made[2].id]
    with redis_client.pipeline() as pipe:
        pipe.watch(keys.job(made[1].id))
        found = jobs.raw_records(ids, client=pipe, batch=2)
    assert [job_id for job_id, _ in found] == ids and found[1][1] is None
    assert Job.model_validate_json(found[2][1] or b"") == made[2]


def test_index_entries_follow_the_status(redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client)
    queued = put(redis_client, "c", 1, status=JobStatus.QUEUED)
    running = put(redis_client, "c", 2, status=JobStatus.IN_PROGRESS)
    ended = put(redis_client, "c", 3)
    active, started, line = keys.active_jobs(), keys.running_jobs(), keys.conv_active("c")
    assert jobs.index_entries(queued) == {active: queued.created_at.timestamp(),
                                          started: None, line: 1.0}
    assert running.started_at is not None
    assert jobs.index_entries(running) == {active: running.created_at.timestamp(),
                                           started: running.started_at.timestamp(), line: 2.0}
    assert jobs.index_entries(ended) == {active: None, started: None, line: None}
    for job in (queued, running, ended):  # as the lifecycle leaves them
        for key, score in jobs.index_entries(job).items():
            assert jobs.in_index(key, job.id) == (score is not None), (job.id, key)


def test_reads_given_a_client_go_through_it_alone(redis_client: redis.Redis) -> None:
    """What check reads under WATCH is read on the WATCHing connection, not the store's."""
    job = put(redis_client, "c", 1)
    redis_client.set(keys.conv_turn("c"), 1)
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    jobs = JobStore(unreachable)
    with redis_client.pipeline() as pipe:
        pipe.watch(*jobs.turn_keys("c"))
        assert jobs.turn_counter("c", client=pipe) == 1
        assert jobs.turn_map("c", client=pipe) == {1: job.id}
        assert [i for i, _ in jobs.raw_records([job.id], client=pipe)] == [job.id]
    with pytest.raises(redis.ConnectionError):
        jobs.turn_counter("c")
