"""With Redis unreachable (nothing listening) or hung (SIGSTOP: connections accepted, never
answered) the API answers 503 fast, never hangs."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mysisterdb.redis_server import RedisServer, free_port, start_redis
from tests.conftest import TEST_LIMITS, stack_env
from tests.procs import start_api


@pytest.fixture(scope="module")
def api_without_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_dir: Path = tmp_path_factory.mktemp("noredis")
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = stack_env(redis_url=dead, api_port=port, sim_port=free_port(), log_dir=log_dir)
    proc, url = start_api(env, log_dir=log_dir)
    yield url
    proc.stop()


# The promises are time bounds (README, runbook: 503 within 2 s, health within 1 s); each is
# asserted with a margin for a loaded 2-core machine. The figures: bench/failure_bench.py.
MARGIN_S = 1.5


def timed(call: object) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()  # type: ignore[operator]
    return response, time.monotonic() - start


def test_submit_answers_503_within_2_s(api_without_redis: str) -> None:
    r, elapsed = timed(lambda: httpx.post(f"{api_without_redis}/api/chat", timeout=10,
                                          json={"message": "こんにちは"}))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "store_unavailable"
    assert elapsed < 2.0 + MARGIN_S


def test_job_lookup_answers_503_within_2_s(api_without_redis: str) -> None:
    r, elapsed = timed(lambda: httpx.get(f"{api_without_redis}/api/jobs/{'0' * 32}", timeout=10))
    assert r.status_code == 503 and elapsed < 2.0 + MARGIN_S


def test_health_answers_503_within_1_s(api_without_redis: str) -> None:
    r, elapsed = timed(lambda: httpx.get(f"{api_without_redis}/api/health", timeout=10))
    assert r.status_code == 503
    assert r.json()["redis"]["ok"] is False
    assert elapsed < 1.0 + MARGIN_S


@pytest.fixture(scope="module")
def api_on_hung_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RedisServer]]:
    """An API with the default settings (the test stack's shortened limits removed) on its
    own redis-server, which the test freezes."""
    log_dir: Path = tmp_path_factory.mktemp("hungredis")
    server = start_redis()
    port = free_port()
    env = stack_env(redis_url=server.url, api_port=port, sim_port=free_port(), log_dir=log_dir)
    for name in TEST_LIMITS:
        env.pop(name)
    try:
        proc, url = start_api(env, log_dir=log_dir)
    except BaseException:
        server.stop()
        raise
    yield url, server
    proc.stop()
    server.stop()


def test_submit_lookup_and_health_answer_503_in_time_when_redis_hangs_with_defaults(
        api_on_hung_redis: tuple[str, RedisServer]) -> None:
    url, server = api_on_hung_redis
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        # The first request right after the freeze: the API has not noticed yet.
        chat, chat_s = timed(lambda: httpx.post(f"{url}/api/chat", timeout=30,
                                                json={"message": "凍ってる？"}))
        job, job_s = timed(lambda: httpx.get(f"{url}/api/jobs/{'0' * 32}", timeout=30))
        health, health_s = timed(lambda: httpx.get(f"{url}/api/health", timeout=30))
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert (chat.status_code, chat.json()["error"]["code"]) == (503, "store_unavailable")
    assert chat_s < 2.0 + MARGIN_S, chat_s
    assert (job.status_code, job.json()["error"]["code"]) == (503, "store_unavailable")
    assert job_s < 2.0 + MARGIN_S, job_s
    assert health.status_code == 503 and health.json()["redis"]["ok"] is False
    assert health_s < 1.0 + MARGIN_S, health_s
