"""A transaction whose reply from Redis was lost is applied once: the stamp it wrote finds it,
against a real redis-server kept busy past the client's timeout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core.jobs import JobStore
from core.redis_client import connect
from mysisterdb.redis_server import RedisServer, start_redis
from tests.core.test_lifecycle import Broker, make, submit

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


@pytest.fixture
def busy_server() -> Iterator[RedisServer]:
    """A server of this test's own: a busy script blocks every client of its server, and
    Valkey answers a blocked consumer BUSY, which would take down the shared stack's worker
    (seen in CI: the shared stack's worker died and every later stack test failed)."""
    server = start_redis()
    yield server
    server.stop()


def test_a_write_whose_reply_was_lost_is_applied_once(busy_server: RedisServer) -> None:
    redis_client = redis.Redis.from_url(busy_server.url, socket_timeout=5)
    job_id = submit(make(redis_client, Broker()), "一")
    jobs = JobStore(connect(busy_server.url, timeout_s=0.3, retries=5))

    def append(current: Any) -> None:
        current.partial_reply += "x"

    def busy(pipe: Any, _job: Any) -> None:
        pipe.hincrby("applied", "n", 1)
        pipe.eval(BUSY_LUA, 0)

    written = jobs.update(job_id, append, after=busy)
    assert written is not None and written.partial_reply == "x"
    assert redis_client.hget("applied", "n") == b"1"
    assert JobStore(redis_client).get(job_id).partial_reply == "x"
