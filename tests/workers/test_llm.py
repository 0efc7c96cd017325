"""Pure unit tests of the retry policy and error mapping (no network)."""

from __future__ import annotations

import time

import pytest
import requests
from google.api_core import exceptions as gexc

from mysisterdb.errors import LLMError, LLMTimeout
from workers.llm import PartialReplyError, RetryPolicy, call_with_retries, classify

POLICY = RetryPolicy(timeout_s=1.0, retries=2, backoff_s=0.01)


def failing(errors: list[Exception], result: str = "ok") -> tuple[list[float], object]:
    timeouts: list[float] = []

    def attempt(timeout_s: float) -> str:
        timeouts.append(timeout_s)
        if errors:
            raise errors.pop(0)
        return result

    return timeouts, attempt


def test_retries_a_transient_error_then_succeeds() -> None:
    timeouts, attempt = failing([LLMError(retryable=True)])
    assert call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10) == "ok"  # type: ignore[arg-type]
    assert len(timeouts) == 2


def test_gives_up_after_the_configured_retries() -> None:
    timeouts, attempt = failing([LLMTimeout(retryable=True) for _ in range(5)])
    with pytest.raises(LLMTimeout):
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10)  # type: ignore[arg-type]
    assert len(timeouts) == 3  # first try + 2 retries


def test_never_retries_a_non_retryable_error() -> None:
    timeouts, attempt = failing([LLMError(retryable=False)])
    with pytest.raises(LLMError):
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10)  # type: ignore[arg-type]
    assert len(timeouts) == 1


def test_never_retries_a_stream_that_already_produced_text() -> None:
    timeouts, attempt = failing([PartialReplyError(LLMTimeout(), "えへへ")])
    with pytest.raises(PartialReplyError) as caught:
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10)  # type: ignore[arg-type]
    assert caught.value.partial == "えへへ" and caught.value.code == "llm_timeout"
    assert len(timeouts) == 1


def test_request_timeout_is_cut_to_the_time_left() -> None:
    timeouts, attempt = failing([])
    call_with_retries(attempt, policy=RetryPolicy(timeout_s=30, retries=0, backoff_s=0),  # type: ignore[arg-type]
                      deadline=time.monotonic() + 2)
    assert 1.5 < timeouts[0] <= 2.0


def test_no_attempt_once_the_deadline_has_passed() -> None:
    timeouts, attempt = failing([])
    with pytest.raises(LLMTimeout):
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() - 1)  # type: ignore[arg-type]
    assert timeouts == []


def test_no_retry_whose_backoff_would_pass_the_deadline() -> None:
    timeouts, attempt = failing([LLMError(retryable=True)])
    slow = RetryPolicy(timeout_s=1.0, retries=5, backoff_s=10.0)
    with pytest.raises(LLMError):
        call_with_retries(attempt, policy=slow, deadline=time.monotonic() + 3)  # type: ignore[arg-type]
    assert len(timeouts) == 1


@pytest.mark.parametrize(("exc", "code", "retryable"), [
    (requests.ReadTimeout("read timed out"), "llm_timeout", True),
    (gexc.DeadlineExceeded("deadline"), "llm_timeout", True),
    (gexc.TooManyRequests("slow down"), "llm_error", True),
    (gexc.InternalServerError("boom"), "llm_error", True),
    (gexc.ServiceUnavailable("later"), "llm_error", True),
    (gexc.BadRequest("bad"), "llm_error", False),
    (gexc.PermissionDenied("key"), "llm_error", False),
    (requests.ConnectionError("refused"), "llm_error", True),
    (ValueError("Can only parse array of JSON objects"), "llm_error", False),
])
def test_classify_maps_sdk_errors(exc: Exception, code: str, retryable: bool) -> None:
    error = classify(exc)
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message  # a Japanese message for the user


def test_classify_sees_a_timeout_wrapped_in_a_connection_error() -> None:
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise requests.ConnectionError("HTTPConnectionPool: Read timed out.") from inner
    except requests.ConnectionError as outer:
        assert classify(outer).code == "llm_timeout"
