"""The LLM endpoint check behind /api/health: what it concludes, and that it never makes
its caller wait on the network."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from core.llm_check import LLMCheck, model_url, verdict
from core.settings import Settings
from mysisterdb.redis_server import free_port
from tests.procs import wait_for

MODEL_PATH = "/v1beta/models/gemini-3.5-flash"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung endpoint)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_model_url_follows_the_endpoint_the_worker_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "MYSISTERDB_GEMINI_ENDPOINT",
                 "MYSISTERDB_SIMULATOR_URL"):
        monkeypatch.delenv(name, raising=False)
    assert model_url(Settings(sim_port=9999)) == f"http://127.0.0.1:9999{MODEL_PATH}"
    assert model_url(Settings(simulator_url="http://simulator:8765")) == \
        f"http://simulator:8765{MODEL_PATH}"
    with_key = Settings(gemini_api_key="k", simulator_url="http://simulator:8765")
    assert model_url(with_key) == f"https://generativelanguage.googleapis.com{MODEL_PATH}"
    explicit = Settings(gemini_api_key="k", gemini_endpoint="example.test:443/")
    assert model_url(explicit) == f"https://example.test:443{MODEL_PATH}"


@pytest.mark.parametrize(("code", "words"), [(200, "reachable"), (400, "key was rejected"),
                                             (403, "not allowed"), (404, "model does not exist"),
                                             (429, "quota"), (503, "HTTP 503")])
def test_verdict_names_the_reason(code: int, words: str) -> None:
    status = verdict(httpx.Response(code))
    assert status.ok is (code == 200) and words in status.detail


def test_key_goes_in_a_header_never_in_the_url() -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    def fetch(url: str, headers: dict[str, str], timeout_s: float) -> httpx.Response:
        seen.append((url, headers))
        return httpx.Response(200)

    check = LLMCheck(url="https://x.test/v1beta/models/m", api_key="AIza-secret",
                     timeout_s=1, interval_s=60, fetch=fetch)
    assert check.status(wait_s=5).ok is True
    assert seen == [("https://x.test/v1beta/models/m", {"x-goog-api-key": "AIza-secret"})]


class Clock:
    """The check's clock, moved by the test: a result gets old when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0  # 0 would read as "never checked"

    def __call__(self) -> float:
        return self.now


def test_result_is_cached_for_the_interval_then_refreshed() -> None:
    calls: list[float] = []
    clock = Clock()

    def fetch(url: str, headers: dict[str, str], timeout_s: float) -> httpx.Response:
        calls.append(clock.now)
        return httpx.Response(200 if len(calls) == 1 else 500)

    check = LLMCheck(url="http://x.test/m", api_key="k", timeout_s=1, interval_s=0.5, fetch=fetch,
                     clock=clock)
    assert check.status(wait_s=5).ok is True
    clock.now += 0.49
    for _ in range(20):
        assert check.status().ok is True
    assert len(calls) == 1
    # Stale: the caller still gets the last answer at once, and a refresh runs behind it.
    clock.now += 0.01
    assert check.status().ok is True
    wait_for(lambda: check.status().ok is False, timeout_s=5, what="the refreshed result")
    assert len(calls) == 2 and "HTTP 500" in check.status().detail


def test_refused_endpoint_is_reported_unreachable() -> None:
    check = LLMCheck(url=f"http://127.0.0.1:{free_port()}{MODEL_PATH}", api_key="k",
                     timeout_s=1, interval_s=60)
    status = check.status(wait_s=5)
    assert status.ok is False and status.detail.startswith("unreachable: ConnectError")


def test_hung_endpoint_never_holds_the_caller(silent_endpoint: str) -> None:
    # The promise is a time bound: the caller waits at most its wait_s (0.1 s), never the
    # probe's timeout (3 s). Asserted with a generous margin that stays well under 3 s.
    check = LLMCheck(url=f"{silent_endpoint}{MODEL_PATH}", api_key="k", timeout_s=3,
                     interval_s=60)
    started = time.monotonic()
    first = check.status(wait_s=0.1)
    assert time.monotonic() - started < 0.1 + 1.5
    assert first.ok is None and "checking" in first.detail
    wait_for(lambda: check.status().ok is False, timeout_s=10, what="the probe's timeout")
    assert check.status().detail == "no answer within 3 s"


def test_a_long_unasked_result_waits_briefly_for_a_fresh_one() -> None:
    answers = iter([200, 500])

    def fetch(url: str, headers: dict[str, str], timeout_s: float) -> httpx.Response:
        return httpx.Response(next(answers))

    clock = Clock()
    check = LLMCheck(url="http://x.test/m", api_key="k", timeout_s=1, interval_s=0.1, fetch=fetch,
                     clock=clock)
    assert check.status(wait_s=5).ok is True
    clock.now += 0.35  # over three intervals with nobody asking: the old answer says little
    assert check.status(wait_s=5).ok is False
