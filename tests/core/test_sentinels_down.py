"""All Sentinels down: asking where the primary is ends within its timeouts, for the sync
client, the asyncio one (the API's store monitor and job watcher) and Celery's broker.

redis-py gives each client it builds for a Sentinel its default retry (10 retries with
backoff, timeouts included) unless told otherwise: a fresh connection behind frozen Sentinels
waited minutes. Real processes: the bundled Valkey as primary, replica and three Sentinels
(tests/sentinel_set.py), frozen with SIGSTOP (accepts connections, never answers: a host
gone from the network) and then killed (refused at once).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from core import redis_sentinel
from core.redis_client import connect
from core.settings import Settings
from taskqueue.app import create_celery
from tests.sentinel_set import MASTER, SentinelSet, start_sentinel_set

TIMEOUT_S = 0.5
# Each Sentinel asked once per discovery at TIMEOUT_S, the discovery made twice (the
# client's one retry of a connection error), plus slack for a loaded 2-core box.
BOUND_S = 3 * TIMEOUT_S * 2 + 1.5


@pytest.fixture
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    found = start_sentinel_set(tmp_path_factory.mktemp("sentinels-down"), secrets.token_hex(16))
    yield found
    for node in found.sentinels:  # a stopped process still dies of SIGKILL, but say so
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGCONT)
    found.stop()


def sentinel_settings(found: SentinelSet) -> Settings:
    return Settings(redis_sentinels=found.sentinel_list, redis_master=MASTER,
                    redis_password=found.password)


def failure_time(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def async_ping(url: str) -> object:
    client = redis_sentinel.async_client(url, timeout_s=TIMEOUT_S)
    try:
        return await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize("how", ["frozen", "killed"])
def test_no_sentinel_answers_and_every_client_fails_within_its_timeouts(
        sentinel_set: SentinelSet, how: str) -> None:
    url = sentinel_settings(sentinel_set).redis_url or ""
    assert connect(url, timeout_s=TIMEOUT_S).ping()  # through the Sentinels while they answer
    for node in sentinel_set.sentinels:
        assert node.process is not None
        if how == "frozen":
            os.kill(node.process.pid, signal.SIGSTOP)
        else:
            node.kill()

    took, error = failure_time(lambda: connect(url, timeout_s=TIMEOUT_S).ping())
    assert isinstance(error, redis.ConnectionError), error
    assert took < BOUND_S, f"sync client: {took:.1f} s"

    took, error = failure_time(lambda: asyncio.run(async_ping(url)))
    assert isinstance(error, redis.ConnectionError), error
    assert took < BOUND_S, f"asyncio client: {took:.1f} s"

    # Celery's broker (kombu asks the Sentinels with our sentinel_kwargs), as the API builds it.
    app = create_celery(sentinel_settings(sentinel_set), broker_socket_timeout_s=TIMEOUT_S)
    with app.connection_for_write() as conn:
        took, error = failure_time(lambda: conn.ensure_connection(max_retries=1))
    assert error is not None
    assert took < BOUND_S, f"broker: {took:.1f} s"
