"""The running job's writes from the record it last wrote (`JobStore.update(..., known=)`),
against a real redis-server of this module's own (its command counts are ours alone): one
round trip, never a lost change, never a resurrected job, applied once after a lost reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core.jobs import JobStore
from core.lifecycle import ClaimStatus, Outcome
from core.models import Job
from mysisterdb.redis_server import RedisServer, start_redis
from tests.core.test_lifecycle import Broker, make, submit


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    client.flushdb()
    client.config_resetstat()
    yield client
    client.close()


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands the server ran so far, by name (those run inside scripts included)."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def running(client: redis.Redis) -> tuple[JobStore, Job]:
    lc = make(client, Broker())
    claim = lc.claim(submit(lc, "こんにちは"))
    assert claim.status is ClaimStatus.CLAIMED and claim.job is not None
    return lc.jobs, claim.job


def write_text(text: str) -> Any:
    def mutate(job: Job) -> None:
        job.partial_reply = text
    return mutate


def test_a_write_from_the_known_record_is_one_script_call(client: redis.Redis) -> None:
    jobs, job = running(client)
    before = calls(client)
    written = jobs.update(job.id, write_text("あ"), known=job)
    after = calls(client)
    assert written is not None and jobs.get(job.id).partial_reply == "あ"
    sent = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # Run by the client: one EVALSHA (GET, SET, the indexes and the PUBLISH inside it).
    assert sent.get("evalsha") == 1 and sent.get("watch", 0) == 0 and sent.get("exec", 0) == 0
    assert written.sequence == jobs.get(job.id).sequence == job.sequence


def test_a_change_made_meanwhile_is_kept_and_ours_made_again_on_it(client: redis.Redis) -> None:
    jobs, job = running(client)
    stale = job.model_copy(deep=True)
    assert jobs.update(job.id, write_text("ほかの書き込み")) is not None  # another writer

    def heartbeat(current: Job) -> None:
        current.worker_pid = 4242

    written = jobs.update(job.id, heartbeat, known=stale)
    stored = jobs.get(job.id)
    assert written is not None and written.write_id == stored.write_id
    assert (stored.partial_reply, stored.worker_pid) == ("ほかの書き込み", 4242)


def test_a_job_ended_meanwhile_is_not_written_again(client: redis.Redis) -> None:
    lc = make(client, Broker())
    job = lc.claim(submit(lc, "こんにちは")).job
    assert job is not None
    stale = job.model_copy(deep=True)
    ended = lc.end(job.id, Outcome.cancelled())
    assert ended is not None
    assert lc.jobs.update(job.id, write_text("遅れた子"), known=stale) is None
    stored = lc.jobs.get(job.id)
    assert stored.status.value == "cancelled" and stored.partial_reply == ""
    assert stored.sequence == ended.sequence


def test_a_write_whose_reply_was_lost_is_applied_once(client: redis.Redis,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, job = running(client)
    script = jobs._write_if_unchanged

    def applied_then_lost(**kwargs: Any) -> Any:
        script(**kwargs)  # the server applies it; its answer never arrives
        raise redis.ConnectionError("connection lost while reading the reply")

    monkeypatch.setattr(jobs, "_write_if_unchanged", applied_then_lost)
    sequence = job.sequence
    written = jobs.update(job.id, write_text("いちど"), known=job)
    assert written is not None and written.partial_reply == "いちど"
    assert jobs.get(job.id).sequence == sequence + 1  # once, not twice


def test_a_claim_starts_only_the_head_of_its_line(client: redis.Redis) -> None:
    lc = make(client, Broker())
    first, second = submit(lc, "いち"), submit(lc, "に")
    assert lc.claim(second).status is ClaimStatus.NOT_HEAD
    assert lc.jobs.get(second).status.value == "queued"
    claimed = lc.claim(first)
    assert claimed.status is ClaimStatus.CLAIMED
    assert lc.claim(first).status is ClaimStatus.DUPLICATE  # a second broker message
    assert lc.jobs.get(first).attempts == 1


def test_an_end_from_the_known_record_checks_its_stamp_instead_of_reading_it(
        client: redis.Redis) -> None:
    lc = make(client, Broker())
    job = lc.claim(submit(lc, "こんにちは")).job
    assert job is not None
    before = calls(client)
    ended = lc.end(job.id, Outcome.cancelled(), known=job)
    after = calls(client)
    assert ended is not None and lc.jobs.get(job.id).status.value == "cancelled"
    sent = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sent.get("watch") == 1 and sent.get("eval") == 1  # the read path WATCHes twice


def test_an_end_from_a_stale_record_reads_it_and_keeps_what_changed(client: redis.Redis) -> None:
    lc = make(client, Broker())
    job = lc.claim(submit(lc, "こんにちは")).job
    assert job is not None
    stale = job.model_copy(deep=True)

    def pid(current: Job) -> None:
        current.worker_pid = 4242

    assert lc.jobs.update(job.id, pid) is not None  # another writer, after our last write
    ended = lc.end(job.id, Outcome.cancelled(), known=stale)
    stored = lc.jobs.get(job.id)
    assert ended is not None and stored.status.value == "cancelled"
    assert stored.worker_pid == 4242
