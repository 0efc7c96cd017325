"""`LLMClient` on google-genai, the maintained SDK and the default (MYSISTERDB_GEMINI_SDK=genai).

It streams `:streamGenerateContent?alt=sse` and hands each Server-Sent Event over as soon as it
arrives, so text reaches the job's `partial_reply` as Gemini produces it. Its HTTP client is
httpx (or its fork httpx2); `HttpOptions.timeout` is in milliseconds and becomes httpx's timeout
for connect and for each read, so a stalled stream is cut after that long with the text so far
kept. Its own retries are off (`HttpRetryOptions(attempts=1)`, and no automatic stream
continuation): ours are bounded by the task's deadline.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import ssl
from collections.abc import Iterator
from typing import Any

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


def httpx_modules() -> list[Any]:
    """httpx and httpx2, whichever are installed: google-genai may use either."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


HTTPX = httpx_modules()
TIMEOUTS: tuple[type[BaseException], ...] = (
    TimeoutError, *(m.TimeoutException for m in HTTPX))
TRANSPORT: tuple[type[BaseException], ...] = tuple(m.TransportError for m in HTTPX)


def transport_errors() -> tuple[type[BaseException], ...]:
    from google.genai.errors import APIError

    # ValueError: a body that is not JSON (UnknownApiResponseError) or not the expected shape.
    return (APIError, *(m.HTTPError for m in HTTPX), OSError, ValueError, TypeError, LLMError)


TRANSPORT_ERRORS = transport_errors()


@functools.cache
def shared_tls_args() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The TLS context google-genai would build for each client, built once (by its own code,
    so the trust store is the one it chooses): the worker's main process calls this before the
    pool forks, and every child's client then shares it instead of loading the certificates
    again (~60 ms of CPU and ~1 MB per child, each for the HTTP and the websocket context).
    A context is plain data until a connection uses it, so it crosses a fork safely; the
    connections themselves are made in each child. None when the SDK no longer has the helper
    (a private one): each client then builds its own, as before."""
    from google.genai import types
    from google.genai._api_client import BaseApiClient

    try:
        sync_args, async_args = BaseApiClient._ensure_httpx_ssl_ctx(types.HttpOptions(),
                                                                   vertexai=False)
    except (AttributeError, TypeError):
        return None
    context = sync_args.get("verify")
    if not isinstance(context, ssl.SSLContext):
        return None
    # "ssl" is what the SDK's websocket context reads; httpx clients never see it.
    return {"verify": context}, {"verify": context, "ssl": context}


def milliseconds(seconds: float) -> int:
    # Never 0: google-genai reads a timeout of 0 as "no timeout".
    return max(1, math.ceil(seconds * 1000))


class GenAIClient(RetryingClient):
    """google-genai `Client` on the Gemini Developer API (API key), one per worker process."""

    def __init__(self, *, api_key: str, model: str, endpoint: str | None, policy: RetryPolicy,
                 embedding_model: str, embedding_dim: int | None,
                 observe: Observer | None = None) -> None:
        from google import genai

        self._client = genai.Client(api_key=api_key, vertexai=False, http_options=self._http_options(
            policy.timeout_s, endpoint, tls=shared_tls_args()))
        self._model = model
        # The request's path as the SDK's own converter makes it, once per client.
        self._stream_path = stream_path(self._client, model)
        check_private_request(self._client, self._stream_path, self._http_options(1.0))
        self._embedding_model = embedding_model
        self._embedding_dim = embedding_dim
        self._policy = policy
        self._observe = observe

    @staticmethod
    def _http_options(timeout_s: float, base_url: str | None = None, *,
                      tls: tuple[dict[str, Any], dict[str, Any]] | None = None) -> Any:
        from google.genai import types

        client_args, async_client_args = tls or (None, None)
        return types.HttpOptions(base_url=base_url, timeout=milliseconds(timeout_s),
                                 retry_options=types.HttpRetryOptions(attempts=1),
                                 client_args=client_args, async_client_args=async_client_args)

    def _stream_once(self, system_instruction: str, contents: list[Turn], timeout_s: float,
                     on_text: TextCallback, *, seed: int | None = None) -> str:
        body = stream_request(system_instruction, contents, seed=seed)
        attempt = Attempt("generate", self._observe)
        pieces = guarded(self._pieces(body, self._http_options(timeout_s)), classify=classify,
                         errors=TRANSPORT_ERRORS)
        return collect(pieces, on_text=on_text, attempt=attempt)

    def _pieces(self, body: dict[str, Any], http_options: Any) -> Iterator[str]:
        # The SDK's HTTP layer (its URL, key header, timeout, error mapping: APIError for an
        # HTTP error or an error event), without `generate_content_stream`'s converters: a
        # third of a pool child's CPU per prompt went into turning our plain request into
        # pydantic models and back, and each streamed event into a response model
        # (docs/performance.md "What a prompt costs"). tests/workers/test_llm.py holds the
        # body to what the SDK's own converter sends.
        for response in self._client._api_client.request_streamed(
                "post", self._stream_path, body, http_options):
            yield chunk_text(json.loads(response.body) if response.body else {})

    def _embed_once(self, batch: list[str], timeout_s: float, *,
                    task: str) -> list[list[float]]:
        from google.genai import types

        config = types.EmbedContentConfig(task_type=task,
                                          output_dimensionality=self._embedding_dim,
                                          http_options=self._http_options(timeout_s))
        attempt = Attempt("embed", self._observe)
        try:
            response = self._client.models.embed_content(
                model=self._embedding_model, contents=batch, config=config)  # type: ignore[arg-type]
            vectors = [list(e.values or []) for e in response.embeddings or []]
        except TRANSPORT_ERRORS as exc:
            error = classify(exc)
            attempt.record(error.code)
            raise error from exc
        attempt.record("ok")
        return vectors


def check_private_request(client: Any, path: str, http_options: Any) -> None:
    """`_pieces` calls a private method of google-genai: one whose parameters differ after
    an upgrade would fail every prompt as a TypeError, read as an unreadable answer. Said
    here, when the worker builds its client, in words."""
    from importlib.metadata import version

    method = getattr(getattr(client, "_api_client", None), "request_streamed", None)
    try:
        if method is None:
            raise TypeError("it is gone")
        inspect.signature(method).bind("post", path, {}, http_options)
    except (TypeError, ValueError) as exc:
        raise RuntimeError(
            f"google-genai {version('google-genai')}: its private "
            f"_api_client.request_streamed(http_method, path, request_dict, http_options), "
            f"which workers/llm_genai.py calls, does not take these arguments ({exc}); pin the "
            "version pyproject.toml names or adapt _pieces") from exc


def stream_path(client: Any, model: str) -> str:
    """`models/<model>:streamGenerateContent?alt=sse`, the model's name as the SDK spells it."""
    from google.genai import _transformers

    return f"{_transformers.t_model(client._api_client, model)}:streamGenerateContent?alt=sse"


def stream_request(system_instruction: str, contents: list[Turn], *,
                   seed: int | None) -> dict[str, Any]:
    """The JSON body of a streamed generate, as google-genai's converter builds it from
    `GenerateContentConfig(system_instruction=..., seed=...)` (automatic function calling and
    continuation are client-side only and send nothing)."""
    return {"contents": [{"parts": [{"text": t.text}], "role": t.role} for t in contents],
            "systemInstruction": {"parts": [{"text": system_instruction}], "role": "user"},
            "generationConfig": {} if seed is None else {"seed": seed}}


def chunk_text(chunk: dict[str, Any]) -> str:
    """The answer's text in one streamed event (its JSON); a thinking model's thoughts are
    not the answer. A body of another shape is a ValueError (an unreadable answer)."""
    try:
        candidates = chunk.get("candidates") or []
        content = (candidates[0].get("content") if candidates else None) or {}
        parts = content.get("parts") or []
        return "".join(p["text"] for p in parts if p.get("text") and not p.get("thought"))
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"unexpected streamed chunk: {type(exc).__name__}") from exc


def classify(exc: BaseException) -> LLMError:
    """Map google-genai / httpx exceptions onto our two LLM errors."""
    from google.genai.errors import APIError

    if in_chain(exc, TIMEOUTS):
        return LLMTimeout(retryable=True)
    if isinstance(exc, APIError):
        return http_error(int(exc.code or 0))
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, (*TRANSPORT, ConnectionError)):
        return connection_error()
    return unreadable(exc)
