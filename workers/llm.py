"""The one interface the worker uses to generate and embed text, and what its Gemini clients share.

Two implementations, one per Google SDK, chosen by MYSISTERDB_GEMINI_SDK in
`workers/runtime.py`: `workers/llm_genai.py` (google-genai, the default: it streams over SSE and
hands each chunk over as it arrives) and `workers/llm_generativeai.py` (google-generativeai, the
design's SDK: its REST stream hands a chunk over only when the next one arrives). Only those two
modules know an SDK.

Both keep the same semantics: every request has a timeout on connect and on each read, below the
task's soft limit; transient failures (429, 5xx, timeouts, refused connections) are retried by us
a bounded number of times, with backoff, never past the deadline (the SDKs' own retries are off);
a stream that fails after text has arrived is not retried: the text so far is kept
(`PartialReplyError`). Failures map onto the same two errors, `LLMTimeout` and `LLMError`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from context.types import Turn
from core.errors import LLMError, LLMTimeout

logger = logging.getLogger(__name__)

T = TypeVar("T")
TextCallback = Callable[[str], None]
Observer = Callable[[str, str, float], None]  # (operation, outcome, seconds) of one request
Classifier = Callable[[BaseException], LLMError]
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
EMBED_BATCH = 100  # the Gemini API's limit of texts per batchEmbedContents request
# Task types of Gemini's embedding models; a stored message is a document, a question a query.
EMBED_TASKS = frozenset({"RETRIEVAL_DOCUMENT", "RETRIEVAL_QUERY", "SEMANTIC_SIMILARITY",
                         "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING",
                         "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"})


class PartialReplyError(LLMError):
    """The stream broke after some text arrived; `partial` holds it."""

    def __init__(self, cause: LLMError, partial: str) -> None:
        super().__init__(cause.message)
        self.code = cause.code
        self.cause = cause
        self.partial = partial


class LLMClient(Protocol):
    def stream(self, *, system_instruction: str, contents: list[Turn], deadline: float,
               on_text: TextCallback, seed: int | None = None) -> str:
        """Generate a reply, calling on_text with each piece as it arrives; return the whole.
        `seed`: sample with this seed (a regenerate's, so that it differs from before)."""

    def embed(self, texts: list[str], *, task: str,
              deadline: float | None = None) -> list[list[float]]:
        """One L2-normalized vector per text, in order (task: one of EMBED_TASKS).
        Without a deadline, the policy's own budget (every try and backoff) bounds the call."""


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float
    retries: int
    backoff_s: float

    def budget_s(self) -> float:
        """The longest a call may take: every try at its timeout, plus every backoff."""
        backoffs = sum(self.backoff_s * 2 ** i for i in range(self.retries))
        return self.timeout_s * (self.retries + 1) + backoffs


@dataclass
class Attempt:
    """Times one request and reports its outcome to the observer (if any)."""

    operation: str
    observe: Observer | None
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def record(self, outcome: str) -> None:
        if self.observe:
            self.observe(self.operation, outcome, time.monotonic() - self.started)


def call_with_retries(attempt: Callable[[float], T], *, policy: RetryPolicy,
                      deadline: float) -> T:
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


def guarded(items: Iterable[T], *, classify: Classifier,
            errors: tuple[type[BaseException], ...]) -> Iterator[T]:
    """The SDK's stream with its failures turned into our LLMError as they happen.
    Only the SDK's iteration is guarded: the caller's own exceptions (a job cancelled,
    the soft time limit) raised while handling a piece never pass through here."""
    try:
        yield from items
    except errors as exc:
        raise classify(exc) from exc


def collect(pieces: Iterable[str], *, on_text: TextCallback, attempt: Attempt) -> str:
    """Hand each piece to on_text at once; a failure after text keeps the text so far."""
    received: list[str] = []
    try:
        for piece in pieces:
            if piece:
                received.append(piece)
                on_text(piece)
    except LLMError as error:
        attempt.record(error.code)
        if received:
            raise PartialReplyError(error, "".join(received)) from error.__cause__
        raise
    finally:
        # A stream left early (job cancelled, soft time limit) gives its connection back now,
        # not whenever the garbage collector gets to it.
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    attempt.record("ok")
    return "".join(received)


def embed_in_batches(texts: list[str], *, task: str, deadline: float | None,
                     policy: RetryPolicy,
                     embed_batch: Callable[[list[str], float], list[list[float]]],
                     ) -> list[list[float]]:
    """At most EMBED_BATCH texts per request, each request retried by our policy, all within
    one deadline; the vectors come back L2-normalized (reduced Gemini vectors are not)."""
    if task not in EMBED_TASKS:
        raise ValueError(f"unknown embedding task {task!r}; one of {sorted(EMBED_TASKS)}")
    if deadline is None:
        deadline = time.monotonic() + policy.budget_s()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start:start + EMBED_BATCH]
        got = call_with_retries(partial(embed_batch, batch), policy=policy, deadline=deadline)
        if len(got) != len(batch):
            raise LLMError(f"Gemini が {len(batch)} 件に {len(got)} 件の埋め込みを返しました。")
        vectors.extend(l2_normalize(v) for v in got)
    return vectors


def l2_normalize(vector: Iterable[float]) -> list[float]:
    values = [float(v) for v in vector]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm else values


def http_error(code: int) -> LLMError:
    return LLMError(f"Gemini がエラーを返しました（HTTP {code}）。もう一度試してください。",
                    retryable=code in RETRYABLE_HTTP)


def connection_error() -> LLMError:
    return LLMError("Gemini に接続できませんでした。もう一度試してください。", retryable=True)


def unreadable(exc: BaseException) -> LLMError:
    logger.warning("unexpected LLM failure: %s: %s", type(exc).__name__, exc)
    return LLMError("Gemini の応答を読み取れませんでした。もう一度試してください。")


def in_chain(exc: BaseException, types: tuple[type[BaseException], ...],
             names: frozenset[str] = frozenset()) -> bool:
    """Is exc, or anything that caused it, one of types (or a class of one of names)?
    Transports wrap timeouts (urllib3's ReadTimeoutError inside a requests ConnectionError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, types) or type(seen).__name__ in names:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RetryingClient:
    """`stream` and `embed` of every SDK client: our bounded retries around one attempt.

    A subclass sets `_policy` and gives `_stream_once` and `_embed_once` (one request each,
    cut by the timeout it is handed)."""

    _policy: RetryPolicy

    def stream(self, *, system_instruction: str, contents: list[Turn], deadline: float,
               on_text: TextCallback, seed: int | None = None) -> str:
        return call_with_retries(
            lambda timeout_s: self._stream_once(system_instruction, contents, timeout_s,
                                                on_text, seed=seed),
            policy=self._policy, deadline=deadline)

    def embed(self, texts: list[str], *, task: str,
              deadline: float | None = None) -> list[list[float]]:
        return embed_in_batches(texts, task=task, deadline=deadline, policy=self._policy,
                                embed_batch=partial(self._embed_once, task=task))

    def _stream_once(self, system_instruction: str, contents: list[Turn], timeout_s: float,
                     on_text: TextCallback, *, seed: int | None = None) -> str:
        raise NotImplementedError

    def _embed_once(self, batch: list[str], timeout_s: float, *,
                    task: str) -> list[list[float]]:
        raise NotImplementedError
