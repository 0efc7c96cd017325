"""The one interface the worker uses to generate text, and its Gemini implementation.

Only this module knows google-generativeai; another SDK can replace it behind `LLMClient`.
Every request has a timeout below the task's soft limit; transient failures (429, 5xx,
timeouts) are retried a bounded number of times, with backoff, and never past the deadline.
A stream that fails after text has arrived is not retried: the text so far is kept.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from context.types import Turn
from mysisterdb.errors import LLMError, LLMTimeout

logger = logging.getLogger(__name__)

TextCallback = Callable[[str], None]
Observer = Callable[[str, float], None]  # (outcome, seconds) of one request
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


def transport_errors() -> tuple[type[BaseException], ...]:
    import requests
    from google.api_core.exceptions import GoogleAPIError

    # ValueError/TypeError: the SDK's parser on a malformed body.
    return (GoogleAPIError, requests.RequestException, OSError, ValueError, TypeError, LLMError)


TRANSPORT_ERRORS = transport_errors()


class PartialReplyError(LLMError):
    """The stream broke after some text arrived; `partial` holds it."""

    def __init__(self, cause: LLMError, partial: str) -> None:
        super().__init__(cause.message)
        self.code = cause.code
        self.cause = cause
        self.partial = partial


class LLMClient(Protocol):
    def stream(self, *, system_instruction: str, contents: list[Turn], deadline: float,
               on_text: TextCallback) -> str:
        """Generate a reply, calling on_text with each piece; return the whole text."""


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float
    retries: int
    backoff_s: float


class GeminiClient:
    """google-generativeai over REST (so it can be pointed at the simulator)."""

    def __init__(self, *, api_key: str, model: str, endpoint: str | None,
                 policy: RetryPolicy, observe: Observer | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import google.generativeai as genai
        options = {"api_endpoint": endpoint} if endpoint else None
        genai.configure(api_key=api_key, transport="rest", client_options=options)
        self._genai = genai
        self._model = model
        self._policy = policy
        self._observe = observe

    def stream(self, *, system_instruction: str, contents: list[Turn], deadline: float,
               on_text: TextCallback) -> str:
        return call_with_retries(
            lambda timeout_s: self._stream_once(system_instruction, contents, timeout_s,
                                                on_text),
            policy=self._policy, deadline=deadline)

    def _stream_once(self, system_instruction: str, contents: list[Turn], timeout_s: float,
                     on_text: TextCallback) -> str:
        from google.generativeai.types import RequestOptions

        model = self._genai.GenerativeModel(self._model, system_instruction=system_instruction)
        payload = [{"role": t.role, "parts": [t.text]} for t in contents]
        # retry=None: the SDK's own default retry would wait up to 600 s; we retry ourselves.
        options = RequestOptions(timeout=timeout_s, retry=None)
        pieces: list[str] = []
        started = time.monotonic()
        try:
            response = model.generate_content(payload, stream=True, request_options=options)
            for text in chunk_texts(response):
                pieces.append(text)
                on_text(text)
        except TRANSPORT_ERRORS as exc:
            # Only failures of the call itself; the task's own signals (soft time limit,
            # job cancelled) pass through untouched.
            error = classify(exc)
            self._record(error.code, started)
            if pieces:
                raise PartialReplyError(error, "".join(pieces)) from exc
            raise error from exc
        self._record("ok", started)
        return "".join(pieces)

    def _record(self, outcome: str, started: float) -> None:
        if self._observe:
            self._observe(outcome, time.monotonic() - started)


def chunk_texts(response: Iterable[object]) -> Iterable[str]:
    for chunk in response:
        parts = getattr(chunk, "parts", None)
        if parts:
            yield "".join(getattr(p, "text", "") for p in parts)


def call_with_retries(attempt: Callable[[float], str], *, policy: RetryPolicy,
                      deadline: float) -> str:
    """Run attempt(timeout_s) until it succeeds, a non-retryable error, or the budget is spent."""
    tries = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0.1:
            raise LLMTimeout()
        try:
            return attempt(min(policy.timeout_s, remaining))
        except PartialReplyError:
            raise
        except LLMError as error:
            tries += 1
            delay = policy.backoff_s * (2 ** (tries - 1))
            if not error.retryable or tries > policy.retries:
                raise
            if time.monotonic() + delay >= deadline:
                raise
            logger.warning("LLM attempt %d failed (%s), retrying in %.2fs", tries, error.code, delay)
            time.sleep(delay)


def classify(exc: BaseException) -> LLMError:
    """Map SDK / transport exceptions onto our two LLM errors."""
    from google.api_core import exceptions as gexc

    if is_timeout(exc) or isinstance(exc, gexc.DeadlineExceeded):
        return LLMTimeout(retryable=True)
    if isinstance(exc, gexc.GoogleAPICallError):
        code = int(exc.code or 0)
        return LLMError(f"Gemini がエラーを返しました（HTTP {code}）。もう一度試してください。",
                        retryable=code in RETRYABLE_HTTP)
    if isinstance(exc, LLMError):
        return exc
    if is_connection_error(exc):
        return LLMError("Gemini に接続できませんでした。もう一度試してください。", retryable=True)
    logger.warning("unexpected LLM failure: %s: %s", type(exc).__name__, exc)
    return LLMError("Gemini の応答を読み取れませんでした。もう一度試してください。")


def is_timeout(exc: BaseException) -> bool:
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.Timeout, TimeoutError)):
            return True
        if type(seen).__name__ in {"ReadTimeoutError", "ConnectTimeoutError"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_connection_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.ConnectionError)
