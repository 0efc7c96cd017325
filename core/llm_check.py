"""Can the LLM endpoint answer? A cheap, cached check for /api/health.

The check is one `GET /v1beta/models/{model}` (the model's metadata): it generates nothing,
and it fails the way every chat would: endpoint unreachable, key rejected, model unknown.
The key travels in the `x-goog-api-key` header, never in the URL (URLs end up in logs).

It runs in a background thread and its result is kept for `interval_s`: a health request
reads the last result and starts a refresh when it is stale.  Health waits on the network
at most `wait_s` (the caller's budget), and only when it has no recent result at all; a
hung endpoint costs the probe its timeout, never the health request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from core.secrets import scrub
from core.settings import Settings

logger = logging.getLogger(__name__)

GOOGLE_ENDPOINT = "https://generativelanguage.googleapis.com"
STALE_INTERVALS = 3  # a result this many intervals old is worth a short wait for a fresh one
Fetch = Callable[[str, dict[str, str], float], httpx.Response]
Clock = Callable[[], float]


@dataclass(frozen=True)
class LLMStatus:
    ok: bool | None  # None: the first check has not finished yet
    detail: str
    checked_at: float  # time.monotonic() of the answer; 0 when never checked

    def age_s(self) -> float | None:
        return round(time.monotonic() - self.checked_at, 1) if self.checked_at else None


PENDING = LLMStatus(ok=None, detail="checking the LLM endpoint", checked_at=0.0)


def model_url(settings: Settings) -> str:
    base = (settings.llm_endpoint() or GOOGLE_ENDPOINT).rstrip("/")
    if "://" not in base:  # the SDK takes a bare host name for https
        base = f"https://{base}"
    model = settings.gemini_model.removeprefix("models/")
    return f"{base}/v1beta/models/{model}"


def http_get(url: str, headers: dict[str, str], timeout_s: float) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=timeout_s)


def verdict(response: httpx.Response) -> LLMStatus:
    code = response.status_code
    if code == 200:
        return LLMStatus(ok=True, detail="reachable", checked_at=time.monotonic())
    reasons = {400: "the API key was rejected", 401: "the API key was rejected",
               403: "the API key is not allowed to use this model",
               404: "the model does not exist", 429: "quota exhausted (rate limited)"}
    reason = reasons.get(code, "the endpoint answers with an error")
    return LLMStatus(ok=False, detail=f"{reason} (HTTP {code})", checked_at=time.monotonic())


class LLMCheck:
    """The last known reachability of the LLM endpoint, refreshed in the background."""

    def __init__(self, *, url: str, api_key: str, timeout_s: float, interval_s: float,
                 fetch: Fetch = http_get, clock: Clock = time.monotonic) -> None:
        self.url = url
        self._headers = {"x-goog-api-key": api_key}
        self._timeout_s = timeout_s
        self._interval_s = interval_s
        self._fetch = fetch
        self._clock = clock  # time.monotonic; a test's own clock decides when a result is old
        self._lock = threading.Lock()
        self._result = PENDING
        self._running: threading.Event | None = None  # set when the running refresh ends

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMCheck:
        # The simulator accepts any key; sending none would make Google answer 403.
        key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else "simulator"
        return cls(url=model_url(settings), api_key=key, timeout_s=settings.llm_check_timeout_s,
                   interval_s=settings.llm_check_interval_s)

    def status(self, *, wait_s: float = 0.0) -> LLMStatus:
        """The last result, starting a refresh when it is stale.  Waits (up to wait_s) for
        that refresh only when there is no result yet or it is far older than the interval
        (nobody asked for a while): then the last result says little about now."""
        with self._lock:
            result = self._result
            age = self._clock() - result.checked_at if result.checked_at else math.inf
            if age >= self._interval_s and self._running is None:
                self._running = threading.Event()
                threading.Thread(target=self._refresh, daemon=True, name="llm-check").start()
            running = self._running
        too_old = age >= STALE_INTERVALS * self._interval_s
        if too_old and running is not None and wait_s > 0 and running.wait(wait_s):
            return self._result
        return result

    def _refresh(self) -> None:
        result = PENDING
        try:
            result = replace(self._probe(), checked_at=self._clock())
        finally:
            with self._lock:
                previous, self._result = self._result, result
                done, self._running = self._running, None
            if done is not None:
                done.set()
        if result.ok != previous.ok:  # log changes, not every refresh
            log = logger.info if result.ok else logger.warning
            log("LLM endpoint %s: %s", self.url, result.detail)

    def _probe(self) -> LLMStatus:
        try:
            return verdict(self._fetch(self.url, self._headers, self._timeout_s))
        except httpx.TimeoutException:
            detail = f"no answer within {self._timeout_s:g} s"
        except Exception as exc:  # unreachable, refused, TLS, DNS: all "every chat fails"
            detail = f"unreachable: {type(exc).__name__}: {scrub(str(exc))}"[:300]
        return LLMStatus(ok=False, detail=detail, checked_at=time.monotonic())
