"""`LLMClient` on google-generativeai, over REST (so it can be pointed at the simulator).

Selected with MYSISTERDB_GEMINI_SDK=generativeai. Its REST stream parses a JSON array and
looks one chunk ahead before handing a chunk over (to know whether it is the last one), so a
chunk reaches `on_text` only when the next one arrives, or when the stream ends or fails:
a stalled stream shows nothing until the read timeout cuts it (the chunk is kept even then).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any, cast

from context.types import Turn
from core.errors import LLMError, LLMTimeout
from workers.llm import (
    Attempt,
    Observer,
    RetryingClient,
    RetryPolicy,
    TextCallback,
    collect,
    connection_error,
    guarded,
    http_error,
    in_chain,
    unreadable,
)


def transport_errors() -> tuple[type[BaseException], ...]:
    import requests
    from google.api_core.exceptions import GoogleAPIError

    # ValueError/TypeError: the SDK's parser on a malformed body.
    return (GoogleAPIError, requests.RequestException, OSError, ValueError, TypeError, LLMError)


TRANSPORT_ERRORS = transport_errors()
TIMEOUT_CLASS_NAMES = frozenset({"ReadTimeoutError", "ConnectTimeoutError"})


class GenerativeAIClient(RetryingClient):
    """google-generativeai: `genai.configure(transport="rest")`, our retries (`retry=None`)."""

    def __init__(self, *, api_key: str, model: str, endpoint: str | None, policy: RetryPolicy,
                 embedding_model: str, embedding_dim: int | None,
                 observe: Observer | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import google.generativeai as genai
        options = {"api_endpoint": endpoint} if endpoint else None
        genai.configure(api_key=api_key, transport="rest", client_options=options)
        self._genai = genai
        self._model = model
        self._embedding_model = embedding_model
        self._embedding_dim = embedding_dim
        self._policy = policy
        self._observe = observe

    def _stream_once(self, system_instruction: str, contents: list[Turn], timeout_s: float,
                     on_text: TextCallback, *, seed: int | None = None) -> str:
        # The retired SDK's GenerationConfig has no seed: a regenerate relies on sampling.
        model = self._genai.GenerativeModel(self._model, system_instruction=system_instruction)
        payload = [{"role": t.role, "parts": [t.text]} for t in contents]
        attempt = Attempt("generate", self._observe)
        pieces = guarded(self._pieces(model, payload, timeout_s), classify=classify,
                         errors=TRANSPORT_ERRORS)
        return collect(pieces, on_text=on_text, attempt=attempt)

    def _pieces(self, model: Any, payload: list[dict[str, Any]],
                timeout_s: float) -> Iterator[str]:
        # Opening the stream is inside the guarded generator too: an HTTP error is raised there.
        response = model.generate_content(payload, stream=True,
                                          request_options=self._options(timeout_s))
        yield from chunk_texts(response)

    def _embed_once(self, batch: list[str], timeout_s: float, *,
                    task: str) -> list[list[float]]:
        attempt = Attempt("embed", self._observe)
        try:
            result = self._genai.embed_content(
                model=f"models/{self._embedding_model}", content=batch,
                task_type=task, output_dimensionality=self._embedding_dim,
                request_options=self._options(timeout_s))
        except TRANSPORT_ERRORS as exc:
            error = classify(exc)
            attempt.record(error.code)
            raise error from exc
        attempt.record("ok")
        # A list of texts gets a BatchEmbeddingDict: one vector per text.
        return [list(v) for v in cast(list[list[float]], result["embedding"])]

    def _options(self, timeout_s: float) -> Any:
        from google.generativeai.types import RequestOptions

        # retry=None: the SDK's own default retry would wait up to 600 s; we retry ourselves.
        # The timeout reaches requests as one number: connect, and each read of the stream.
        return RequestOptions(timeout=timeout_s, retry=None)


def chunk_texts(response: Iterable[object]) -> Iterable[str]:
    for chunk in response:
        parts = getattr(chunk, "parts", None)
        if parts:
            yield "".join(getattr(p, "text", "") for p in parts)


def classify(exc: BaseException) -> LLMError:
    """Map google-generativeai / requests exceptions onto our two LLM errors."""
    import requests
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.DeadlineExceeded) or in_chain(
            exc, (requests.Timeout, TimeoutError), TIMEOUT_CLASS_NAMES):
        return LLMTimeout(retryable=True)
    if isinstance(exc, gexc.GoogleAPICallError):
        return http_error(int(exc.code or 0))
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, requests.ConnectionError):
        return connection_error()
    return unreadable(exc)
