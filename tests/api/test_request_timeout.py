"""README: any request taking longer than MYSISTERDB_REQUEST_TIMEOUT answers 504
{"error": {"code": "request_timeout", …}} and the server goes on serving.

The slow cause is a real one: Redis pausing its writers (CLIENT PAUSE … WRITE, what a
failover does while the replica catches up). Reads and PINGs still answer, so the store
guard (503 when Redis does not answer) stays quiet, and a reset's write waits up to
MYSISTERDB_REDIS_TIMEOUT_S, set here above the request budget. Its own redis-server: the
pause holds every writer of the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from mysisterdb.redis_server import start_redis
from tests.conftest import start_stack
from tests.procs import Stack

REQUEST_TIMEOUT_S = 1.0
REDIS_TIMEOUT_S = 5.0  # a paused write waits this long: far past the request budget
PAUSE_MS = 4000  # lifted by the test as soon as it has seen the 504
MARGIN_S = 1.5  # a loaded 2-core machine (the same margin as test_redis_down)
HEALTH_S = 1.0  # runbook: health answers within 1 s


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, redis.Redis]]:
    server = start_redis()
    try:
        running = start_stack(redis_url=server.url, log_dir=tmp_path_factory.mktemp("timeout"),
                              extra={"MYSISTERDB_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
                                     "MYSISTERDB_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S)})
    except BaseException:
        server.stop()
        raise
    admin = redis.Redis.from_url(server.url, socket_timeout=5)
    yield running, admin
    admin.close()
    running.stop()
    server.stop()


def timed(call: object) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()  # type: ignore[operator]
    return response, time.monotonic() - start


def test_a_request_past_the_timeout_answers_504_and_the_server_goes_on_serving(
        slow_stack: tuple[Stack, redis.Redis], conversation_id: str) -> None:
    stack, admin = slow_stack
    job = stack.submit("覚えておいてね", conversation_id=conversation_id)
    assert stack.wait_job(job["id"])["status"] == "completed"
    reset_url = f"{stack.api_url}/api/conversations/{conversation_id}/reset"
    health_url = f"{stack.api_url}/api/health"
    for attempt in range(3):
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        try:
            slow, slow_s = timed(lambda: httpx.post(reset_url, timeout=30))
            meanwhile, meanwhile_s = timed(lambda: httpx.get(health_url, timeout=30))
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert slow.status_code == 504, (attempt, slow.status_code, slow.text)
        assert slow.json()["error"]["code"] == "request_timeout"
        assert slow.json()["error"]["message"]
        assert REQUEST_TIMEOUT_S <= slow_s < REQUEST_TIMEOUT_S + MARGIN_S, (attempt, slow_s)
        assert meanwhile.status_code == 200, (attempt, meanwhile.text)
        assert meanwhile_s < HEALTH_S + MARGIN_S, (attempt, meanwhile_s)
    after, after_s = timed(lambda: httpx.get(health_url, timeout=30))
    assert after.status_code == 200 and after_s < HEALTH_S + MARGIN_S
    # Still serving: the same reset, writes flowing again, answers at once.
    again = httpx.post(reset_url, timeout=30)
    assert again.status_code == 200 and again.json()["reset"] is True
