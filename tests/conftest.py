"""Shared fixtures: a real redis-server (the same binary `make run` uses) for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from mysisterdb.redis_server import RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a flushed database: each test starts from empty storage."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5, decode_responses=False)
    client.flushdb()
    yield client
    client.close()
