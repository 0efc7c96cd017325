"""What an SSE stream costs the API per change of its job: no read at all (the announcement
carries the record), against a real redis-server of this module's own and the API's real
job watcher (pub/sub)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from api.routes.jobs import changes
from api.watch import JobWatcher
from core.lifecycle import Outcome
from core.models import Job
from mysisterdb.redis_server import RedisServer, start_redis
from tests.core.test_lifecycle import Broker, make, submit

CHANGES = 10


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


async def until(condition: object, *, timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout_s)


def counting_reads(watcher: JobWatcher) -> list[int]:
    """Counts the watcher's reads of a job from Redis: the list's one item."""
    reads, read = [0], watcher.read

    async def counted(job_id: str) -> Job | None:
        reads[0] += 1
        return await read(job_id)

    watcher.read = counted  # type: ignore[method-assign]
    return reads


def test_a_stream_sends_each_announced_change_without_reading_it(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    lc = make(client, Broker())
    job_id = submit(lc, "こんにちは")
    known = lc.claim(job_id).job
    assert known is not None

    async def scenario() -> tuple[int, list[int]]:
        watcher = JobWatcher(url=server.url, timeout_s=2)
        watcher.start()
        reads, seen = counting_reads(watcher), []
        try:
            await until(lambda: watcher.listening)

            async def follow() -> None:
                with watcher.following(job_id) as follow:
                    await follow.first()  # as the route's stream_start does
                    async for job in changes(follow, seen=-1, max_s=30):
                        seen.append(job.sequence)

            stream = asyncio.create_task(follow())
            await until(lambda: bool(seen))
            job = known
            for n in range(CHANGES):  # one at a time: each is announced and read on its own
                def write(current: Job, text: str = "あ" * (n + 1)) -> None:
                    current.partial_reply = text
                job = await asyncio.to_thread(lc.jobs.update, job_id, write, known=job)
                assert job is not None
                await until(lambda: seen[-1] == job.sequence)  # noqa: B023
            await asyncio.to_thread(lc.end, job_id, Outcome.cancelled())
            await asyncio.wait_for(stream, 10)
            return reads[0], seen
        finally:
            await watcher.stop()

    reads, seen = asyncio.run(scenario())
    assert len(seen) == CHANGES + 2  # the state at the start, each change, the end
    # The first read, and a recheck (every ~5 s) at most once more. Reading each announced
    # change made it one more per change; reading before each wait too, two per change.
    assert reads <= 2, reads


def test_a_stream_starts_from_the_read_that_checked_its_job(server: RedisServer) -> None:
    """The route reads the job once before its stream starts (404, 204): the stream's first
    event is that read, not a second one; the change after it arrives with its announcement."""
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    lc = make(client, Broker())
    job_id = submit(lc, "はじめから")

    async def scenario() -> tuple[int, list[int], int]:
        watcher = JobWatcher(url=server.url, timeout_s=2)
        watcher.start()
        reads, seen = counting_reads(watcher), []
        try:
            await until(lambda: watcher.listening)
            with watcher.following(job_id) as follow:
                checked = await follow.first()
                assert checked is not None
                async for job in changes(follow, seen=-1, max_s=30):
                    seen.append(job.sequence)
                    if len(seen) == 1:  # the checked state; then a change, announced
                        await asyncio.to_thread(lc.claim, job_id)
                    else:
                        break
            return reads[0], seen, checked.sequence
        finally:
            await watcher.stop()

    reads, seen, checked = asyncio.run(scenario())
    assert seen == [checked, checked + 1], seen
    assert reads == 1, reads  # the check's read; the claim came with its announcement
