"""With Redis unreachable the API answers 503 fast, never hangs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mysisterdb.redis_server import free_port
from tests.conftest import stack_env
from tests.procs import Proc, http_ok, mysisterdb, start, wait_for


@pytest.fixture(scope="module")
def api_without_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_dir: Path = tmp_path_factory.mktemp("noredis")
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = stack_env(redis_url=dead, api_port=port, sim_port=free_port(), log_dir=log_dir)
    proc: Proc = start("api", mysisterdb("api"), env=env, log_dir=log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(http_ok(f"{url}/api/current-time"), timeout_s=20, what="api")
        yield url
    finally:
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
