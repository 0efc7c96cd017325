"""/api/health reports whether the LLM endpoint answers: a stack whose every chat would fail
on the LLM is `degraded`, never `ok`, and health stays fast while the endpoint hangs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mysisterdb.redis_server import free_port
from tests.procs import Proc, Stack, start_api, wait_for

# Health's promise is a time bound: an answer within 1 s, whatever the LLM endpoint does.
# Asserted with a margin for a loaded machine, and a probe timeout above bound + margin, so a
# health request that waited on the probe would still fail. The figure: bench/failure_bench.py.
HEALTH_BOUND_S = 1.0 + 1.0
CHECK_TIMEOUT_S = 4.0


def second_api(stack: Stack, log_dir: Path, *, endpoint: str) -> tuple[Proc, str]:
    """A second API on the shared stack's Redis (so its worker is online), whose LLM
    endpoint is `endpoint` instead of the simulator."""
    port = free_port()
    env = {**stack.env, "MYSISTERDB_PORT": str(port), "MYSISTERDB_GEMINI_ENDPOINT": endpoint,
           "MYSISTERDB_LLM_CHECK_TIMEOUT_S": str(CHECK_TIMEOUT_S), "MYSISTERDB_LLM_CHECK_INTERVAL_S": "2"}
    return start_api(env, log_dir=log_dir, name=f"api-{port}")


@pytest.fixture(scope="module")
def api_with_dead_llm(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The case: the endpoint refuses connections (nothing listens there).
    proc, url = second_api(stack, tmp_path_factory.mktemp("deadllm"),
                          endpoint=f"http://127.0.0.1:{free_port()}")
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def api_with_hung_llm(stack: Stack,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        proc, url = second_api(stack, tmp_path_factory.mktemp("hungllm"),
                              endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}")
        yield url
        proc.stop()


def timed_health(url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(f"{url}/api/health", timeout=10)
    return response, time.monotonic() - started


def test_health_is_ok_when_the_llm_endpoint_answers(stack: Stack) -> None:
    body = httpx.get(f"{stack.api_url}/api/health", timeout=5).json()
    assert body["status"] == "ok"
    assert body["llm"]["ok"] is True and body["llm"]["detail"] == "reachable"
    assert body["llm"]["endpoint"] == f"{stack.sim_url}/v1beta/models/gemini-3.5-flash"


def test_health_is_degraded_when_the_llm_endpoint_is_unreachable(api_with_dead_llm: str) -> None:
    wait_for(lambda: timed_health(api_with_dead_llm)[0].json()["llm"]["ok"] is False,
             timeout_s=10, what="the first LLM check")
    r, elapsed = timed_health(api_with_dead_llm)
    body = r.json()
    assert r.status_code == 200 and elapsed < HEALTH_BOUND_S
    assert body["status"] == "degraded" and body["workers"]["ok"] is True
    assert body["llm"]["detail"].startswith("unreachable: ConnectError"), body["llm"]


def test_health_stays_fast_while_the_llm_endpoint_hangs(api_with_hung_llm: str) -> None:
    for _ in range(5):  # pending first check, then its timeout: never slow, never "ok"
        r, elapsed = timed_health(api_with_hung_llm)
        assert elapsed < HEALTH_BOUND_S and r.json()["status"] == "degraded", r.json()
    wait_for(lambda: "no answer within" in timed_health(api_with_hung_llm)[0].json()["llm"]["detail"],
             timeout_s=CHECK_TIMEOUT_S + 10, what="the LLM check's timeout")
    r, elapsed = timed_health(api_with_hung_llm)
    assert elapsed < HEALTH_BOUND_S and r.json()["status"] == "degraded"
