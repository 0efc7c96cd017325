"""JobStore transactions against a real redis-server."""

from __future__ import annotations

import redis

from mysisterdb.jobs import JobStore
from mysisterdb.models import Job, JobStatus
from mysisterdb.redis_client import connect
from mysisterdb.redis_server import RedisServer

# Keeps the server busy past the client's socket timeout, like a latency spike: the EXEC is
# applied but its reply arrives too late.
BUSY_LUA = """
local start = redis.call('TIME')
local until_us = (tonumber(start[1]) * 1000000 + tonumber(start[2])) + 600000
while true do
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000000 + tonumber(now[2]) > until_us then break end
end
return 1
"""


def test_a_write_whose_reply_was_lost_is_applied_once(redis_server: RedisServer,
                                                      redis_client: redis.Redis) -> None:
    slow = connect(redis_server.url, timeout_s=0.3, retries=5)
    jobs = JobStore(slow)
    job = Job(id="j1", conversation_id="c", turn=1)
    jobs.create(job)

    def append(current: Job) -> None:
        current.partial_reply += "x"

    def busy(pipe: object, _job: Job) -> None:
        pipe.hincrby("applied", "n", 1)  # type: ignore[attr-defined]
        pipe.eval(BUSY_LUA, 0)  # type: ignore[attr-defined]

    written = jobs.update(job.id, append, after=busy)
    assert written is not None and written.partial_reply == "x"
    assert redis_client.hget("applied", "n") == b"1"
    assert JobStore(redis_client).get(job.id).partial_reply == "x"


def test_claim_starts_a_job_once(redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client)
    jobs.create(Job(id="j2", conversation_id="c", turn=1))
    first, second = jobs.claim("j2"), jobs.claim("j2")
    assert first is not None and first.status is JobStatus.IN_PROGRESS and first.attempts == 1
    assert second is None
    assert jobs.running_count() == 1


def test_finalize_keeps_the_indexes_in_step(redis_client: redis.Redis) -> None:
    jobs = JobStore(redis_client)
    jobs.create(Job(id="j3", conversation_id="c", turn=1))
    jobs.create(Job(id="j4", conversation_id="c", turn=2))
    assert jobs.first_active_before("c", turn=2) == "j3"
    jobs.claim("j3")
    ended = jobs.finalize("j3", status=JobStatus.CANCELLED)
    assert ended is not None and ended.previous_status is JobStatus.IN_PROGRESS
    assert jobs.first_active_before("c", turn=2) is None
    assert jobs.running_count() == 0 and jobs.active_ids() == ["j4"]
    assert jobs.finalize("j3", status=JobStatus.FAILED) is None  # final stays final
