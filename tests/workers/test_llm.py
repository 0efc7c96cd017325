"""The LLM clients: the retry policy and error mapping as pure units, then both SDKs' clients
against the real simulator (its own process): streaming, stalls, errors and embeddings."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable

import httpx
import httpx2
import pytest
import redis
import requests
from google.api_core import exceptions as gexc
from google.genai import errors as genai_errors

from context.types import Turn
from core import keys
from core.errors import LLMError, LLMTimeout
from core.metrics import MetricsRecorder
from core.settings import Settings
from mysisterdb.redis_server import free_port
from mysisterdb.simulator import HOLD_MAX_S, embed_text, reply_chunks
from workers import llm_genai, llm_generativeai
from workers.llm import LLMClient, PartialReplyError, RetryPolicy, call_with_retries
from workers.runtime import build_llm, latency_observer, llm_client_class

POLICY = RetryPolicy(timeout_s=1.0, retries=2, backoff_s=0.01)
SDKS = ["genai", "generativeai"]
FIRST_CHUNK = reply_chunks("")[0]


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
    assert call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10) == "ok"  # type: ignore[call-overload]
    assert len(timeouts) == 2


def test_gives_up_after_the_configured_retries() -> None:
    timeouts, attempt = failing([LLMTimeout(retryable=True) for _ in range(5)])
    with pytest.raises(LLMTimeout):
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10)  # type: ignore[call-overload]
    assert len(timeouts) == 3  # first try + 2 retries


def test_never_retries_a_non_retryable_error() -> None:
    timeouts, attempt = failing([LLMError(retryable=False)])
    with pytest.raises(LLMError):
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10)  # type: ignore[call-overload]
    assert len(timeouts) == 1


def test_never_retries_a_stream_that_already_produced_text() -> None:
    timeouts, attempt = failing([PartialReplyError(LLMTimeout(), "えへへ")])
    with pytest.raises(PartialReplyError) as caught:
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() + 10)  # type: ignore[call-overload]
    assert caught.value.partial == "えへへ" and caught.value.code == "llm_timeout"
    assert len(timeouts) == 1


def test_request_timeout_is_cut_to_the_time_left() -> None:
    timeouts, attempt = failing([])
    call_with_retries(attempt, policy=RetryPolicy(timeout_s=30, retries=0, backoff_s=0),  # type: ignore[call-overload]
                      deadline=time.monotonic() + 2)
    assert 1.5 < timeouts[0] <= 2.0


def test_no_attempt_once_the_deadline_has_passed() -> None:
    timeouts, attempt = failing([])
    with pytest.raises(LLMTimeout):
        call_with_retries(attempt, policy=POLICY, deadline=time.monotonic() - 1)  # type: ignore[call-overload]
    assert timeouts == []


def test_no_retry_whose_backoff_would_pass_the_deadline() -> None:
    timeouts, attempt = failing([LLMError(retryable=True)])
    slow = RetryPolicy(timeout_s=1.0, retries=5, backoff_s=10.0)
    with pytest.raises(LLMError):
        call_with_retries(attempt, policy=slow, deadline=time.monotonic() + 3)  # type: ignore[call-overload]
    assert len(timeouts) == 1


def test_policy_budget_covers_every_try_and_backoff() -> None:
    assert RetryPolicy(timeout_s=2.0, retries=2, backoff_s=0.5).budget_s() == 2.0 * 3 + 0.5 + 1.0


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
def test_generativeai_classify_maps_sdk_errors(exc: Exception, code: str, retryable: bool) -> None:
    error = llm_generativeai.classify(exc)
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message  # a Japanese message for the user


def api_error(code: int) -> genai_errors.APIError:
    cls = genai_errors.ClientError if code < 500 else genai_errors.ServerError
    return cls(code, {"error": {"code": code, "message": "x", "status": "S"}})


@pytest.mark.parametrize(("exc", "code", "retryable"), [
    (httpx2.ReadTimeout("timed out"), "llm_timeout", True),
    (httpx.ConnectTimeout("timed out"), "llm_timeout", True),
    (api_error(429), "llm_error", True),
    (api_error(500), "llm_error", True),
    (api_error(503), "llm_error", True),
    (api_error(400), "llm_error", False),
    (api_error(403), "llm_error", False),
    (httpx2.ConnectError("refused"), "llm_error", True),
    (httpx2.RemoteProtocolError("peer closed connection"), "llm_error", True),
    (genai_errors.UnknownApiResponseError("not JSON"), "llm_error", False),
])
def test_genai_classify_maps_sdk_errors(exc: Exception, code: str, retryable: bool) -> None:
    error = llm_genai.classify(exc)
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message


def test_classify_sees_a_timeout_wrapped_in_a_connection_error() -> None:
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise requests.ConnectionError("HTTPConnectionPool: Read timed out.") from inner
    except requests.ConnectionError as outer:
        assert llm_generativeai.classify(outer).code == "llm_timeout"


def test_genai_timeout_is_sent_in_milliseconds_never_zero() -> None:
    assert llm_genai.milliseconds(1.5) == 1500
    assert llm_genai.milliseconds(0.0001) == 1  # 0 would mean "no timeout" to google-genai


# --- Both clients against the real simulator -------------------------------------------

Observed = list[tuple[str, str, float]]


def make_client(sdk: str, url: str, *, timeout_s: float = 5.0, retries: int = 1,
                observed: Observed | None = None, embedding_dim: int | None = 64,
                api_key: str = "sim-key") -> LLMClient:
    sink = observed if observed is not None else []
    client: LLMClient = llm_client_class(sdk)(
        api_key=api_key, model="gemini-3.5-flash", endpoint=url,
        policy=RetryPolicy(timeout_s=timeout_s, retries=retries, backoff_s=0.05),
        embedding_model="gemini-embedding-001", embedding_dim=embedding_dim,
        observe=lambda op, outcome, s: sink.append((op, outcome, s)))
    return client


def ask(client: LLMClient, text: str, on_text: Callable[[str], None] | None = None,
        budget_s: float = 20.0) -> str:
    return client.stream(system_instruction="あなたは妹です。",
                         contents=[Turn(role="user", text=text)],
                         deadline=time.monotonic() + budget_s,
                         on_text=on_text or (lambda _piece: None))


def requests_with(url: str, marker: str) -> list[object]:
    seen = httpx.get(f"{url}/_sim/requests", timeout=5).json()
    return [r for r in seen if marker in str(r)]


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def sdk_converted_body(system_instruction: str, contents: list[Turn], seed: int | None,
                       ) -> dict[str, object]:
    """What google-genai's own `generate_content_stream` sends for the same request."""
    from google import genai
    from google.genai import _common, models, types

    client = genai.Client(api_key="k", vertexai=False)
    config = types.GenerateContentConfig(
        system_instruction=system_instruction, seed=seed,
        http_options=types.HttpOptions(timeout=1000),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False)
    params = types._GenerateContentParameters(
        model="gemini-3.5-flash", config=config,
        contents=[{"role": t.role, "parts": [{"text": t.text}]} for t in contents])
    body = models._GenerateContentParameters_to_mldev(client._api_client, params, None, params)
    body = {k: v for k, v in body.items() if not k.startswith("_") and k != "config"}
    return dict(_common.encode_unserializable_types(_common.convert_to_dict(body)))


@pytest.mark.parametrize("seed", [None, 1234])
def test_genai_sends_what_the_sdks_own_converter_would(seed: int | None,
                                                      simulator_url: str) -> None:
    """The client builds the request itself (the SDK's converters cost a third of a pool
    child's CPU per prompt): the simulator must receive exactly the SDK's body."""
    tag = marker()
    contents = [Turn(role="user", text=f"前の話 {tag}"), Turn(role="model", text="うん"),
                Turn(role="user", text="続けて")]
    client = make_client("genai", simulator_url)
    client.stream(system_instruction="あなたは妹です。", contents=contents, seed=seed,
                  deadline=time.monotonic() + 20, on_text=lambda _piece: None)
    sent = [r for r in requests_with(simulator_url, tag) if isinstance(r, dict)]
    assert sent == [sdk_converted_body("あなたは妹です。", contents, seed)]


def test_genai_chunk_text_leaves_thoughts_out_and_refuses_other_shapes() -> None:
    chunk = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "考え中", "thought": True}, {"text": "おはよ"}, {"text": "う"}]}}]}
    assert llm_genai.chunk_text(chunk) == "おはよう"
    assert llm_genai.chunk_text({"candidates": []}) == ""  # e.g. the usage-only last event
    for odd in ({"candidates": "x"}, {"candidates": [{"content": {"parts": [7]}}]}):
        with pytest.raises(ValueError):
            llm_genai.chunk_text(odd)  # type: ignore[arg-type]


def test_genai_private_request_method_of_another_shape_stops_the_client_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed generate goes through google-genai's private `request_streamed`: if an
    upgrade changes its parameters, building the client says so, naming the method and the
    version, instead of every prompt failing as an unreadable Gemini answer."""
    from google.genai._api_client import BaseApiClient

    def request_streamed(self: object, http_method: str, path: str, *,
                         request: dict[str, object], options: object = None) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(BaseApiClient, "request_streamed", request_streamed)
    with pytest.raises(RuntimeError, match=r"google-genai .*request_streamed.*does not take"):
        make_client("genai", "http://127.0.0.1:9")


@pytest.mark.parametrize("sdk", SDKS)
def test_streams_the_reply_piece_by_piece(sdk: str, simulator_url: str) -> None:
    observed: Observed = []
    pieces: list[str] = []
    text = f"こんにちは {marker()}"
    reply = ask(make_client(sdk, simulator_url, observed=observed), text, pieces.append)
    assert pieces == reply_chunks(text)
    assert reply == "".join(pieces)
    assert [(op, outcome) for op, outcome, _ in observed] == [("generate", "ok")]


@pytest.mark.parametrize(("sdk", "streams_live"), [("genai", True), ("generativeai", False)])
def test_first_chunk_reaches_on_text_while_the_stream_is_still_open(
        sdk: str, streams_live: bool, simulator_url: str) -> None:
    """The simulator sends one chunk, then holds the stream open until released (or until
    HOLD_MAX_S). google-genai hands the chunk over at once; google-generativeai looks one
    chunk ahead, so it hands it over only once the hold has expired and more arrived."""
    name = marker()
    states: list[str] = []

    def on_text(piece: str) -> None:
        if not states:
            states.append(httpx.get(f"{simulator_url}/_sim/holds/{name}", timeout=5)
                          .json()["state"])
            httpx.post(f"{simulator_url}/_sim/release/{name}", timeout=5)

    client = make_client(sdk, simulator_url, timeout_s=HOLD_MAX_S + 5)
    reply = ask(client, f"#sim:hold={name}", on_text)
    assert reply.startswith(FIRST_CHUNK) and len(reply) > len(FIRST_CHUNK)
    assert states == (["held"] if streams_live else ["expired"])


@pytest.mark.parametrize("sdk", SDKS)
def test_a_stall_is_cut_by_the_read_timeout_and_the_text_kept(sdk: str,
                                                             simulator_url: str) -> None:
    observed: Observed = []
    pieces: list[str] = []
    text = f"#sim:stall {marker()}"
    client = make_client(sdk, simulator_url, timeout_s=1.0, retries=1, observed=observed)
    with pytest.raises(PartialReplyError) as caught:
        ask(client, text, pieces.append)
    assert caught.value.code == "llm_timeout" and caught.value.partial == FIRST_CHUNK
    assert pieces == [FIRST_CHUNK]
    assert len(requests_with(simulator_url, text)) == 1  # text arrived: never retried
    [(op, outcome, seconds)] = observed
    assert (op, outcome) == ("generate", "llm_timeout") and seconds >= 1.0


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize(("directive", "code", "retryable", "tries"), [
    ("#sim:error=500", "llm_error", True, 2),
    ("#sim:error=429", "llm_error", True, 2),
    ("#sim:error=400", "llm_error", False, 1),
    ("#sim:garbage", "llm_error", False, 1),
    ("#sim:hang", "llm_timeout", True, 2),
])
def test_errors_map_to_the_same_codes(sdk: str, directive: str, code: str, retryable: bool,
                                      tries: int, simulator_url: str) -> None:
    observed: Observed = []
    pieces: list[str] = []
    text = f"{directive} {marker()}"
    client = make_client(sdk, simulator_url, timeout_s=0.5, retries=1, observed=observed)
    with pytest.raises(LLMError) as caught:
        ask(client, text, pieces.append)
    error = caught.value
    assert not isinstance(error, PartialReplyError) and pieces == []
    assert (error.code, error.retryable) == (code, retryable)
    assert len(requests_with(simulator_url, text)) == tries
    assert [outcome for _, outcome, _ in observed] == [code] * tries


class Cancelled(Exception):
    """Stands for the task's own signals (job cancelled, soft time limit) raised in on_text."""


@pytest.mark.parametrize("sdk", SDKS)
def test_an_exception_raised_by_on_text_passes_through_untouched(sdk: str,
                                                                 simulator_url: str) -> None:
    observed: Observed = []
    text = f"#sim:stall {marker()}"

    def on_text(_piece: str) -> None:
        raise Cancelled()

    with pytest.raises(Cancelled):
        ask(make_client(sdk, simulator_url, timeout_s=1.0, observed=observed), text, on_text)
    assert observed == []  # neither a success nor an LLM failure
    assert len(requests_with(simulator_url, text)) == 1


@pytest.mark.parametrize("sdk", SDKS)
def test_a_refused_connection_is_a_retried_llm_error(sdk: str) -> None:
    observed: Observed = []
    client = make_client(sdk, f"http://127.0.0.1:{free_port()}", retries=1, observed=observed)
    with pytest.raises(LLMError) as caught:
        ask(client, "だれかいる？")
    assert (caught.value.code, caught.value.retryable) == ("llm_error", True)
    assert [outcome for _, outcome, _ in observed] == ["llm_error", "llm_error"]


@pytest.mark.parametrize("sdk", SDKS)
def test_the_api_key_is_never_logged(sdk: str, simulator_url: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    secret = f"AIza-{uuid.uuid4().hex}"
    client = make_client(sdk, simulator_url, timeout_s=0.5, retries=1, api_key=secret)
    with caplog.at_level(logging.DEBUG):
        ask(client, "こんにちは")
        with pytest.raises(LLMError):
            ask(client, "#sim:error=503")
        client.embed(["こんにちは"], task="RETRIEVAL_DOCUMENT")
    assert caplog.records  # the SDKs and our retries did log something
    assert secret not in caplog.text


@pytest.mark.parametrize(("sdk", "client_class"), [
    ("genai", llm_genai.GenAIClient), ("generativeai", llm_generativeai.GenerativeAIClient)])
def test_runtime_builds_the_chosen_sdk_and_records_its_latencies(
        sdk: str, client_class: type, simulator_url: str, redis_client: redis.Redis) -> None:
    settings = Settings(gemini_sdk=sdk, gemini_endpoint=simulator_url)  # type: ignore[arg-type]
    client = build_llm(settings, observe=latency_observer(MetricsRecorder(redis_client)))
    assert isinstance(client, client_class)
    ask(client, "こんにちは")
    client.embed(["こんにちは"], task="RETRIEVAL_DOCUMENT")
    for name in ("llm_latency|ok", "llm_embed_latency|ok"):
        assert redis_client.hget(keys.metrics_histogram(name), "count") == b"1"


# --- Embeddings --------------------------------------------------------------------------

def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("sdk", SDKS)
def test_embed_returns_the_simulators_normalized_vectors_in_order(sdk: str,
                                                                 simulator_url: str) -> None:
    observed: Observed = []
    texts = ["お兄ちゃんの誕生日は五月五日", "お兄ちゃんの誕生日は五月五日だよ", "I parked the car on B3"]
    vectors = make_client(sdk, simulator_url, observed=observed).embed(
        texts, task="RETRIEVAL_DOCUMENT")
    assert [len(v) for v in vectors] == [64, 64, 64]
    assert all(math.isclose(cosine(v, v), 1.0) for v in vectors)
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(embed_text(text, 64))
    assert cosine(vectors[0], vectors[1]) > 0.8 > cosine(vectors[0], vectors[2])
    assert [(op, outcome) for op, outcome, _ in observed] == [("embed", "ok")]


@pytest.mark.parametrize("sdk", SDKS)
def test_embed_sends_at_most_100_texts_per_request(sdk: str, simulator_url: str) -> None:
    tag = marker()
    texts = [f"{tag} メッセージ {i}" for i in range(150)]
    vectors = make_client(sdk, simulator_url).embed(texts, task="RETRIEVAL_DOCUMENT")
    assert len(vectors) == 150
    assert vectors[149] == pytest.approx(embed_text(texts[149], 64))
    sent = [r for r in requests_with(simulator_url, tag) if isinstance(r, dict)]
    assert [len(r["requests"]) for r in sent] == [100, 50]
    # google-generativeai asks for `enum-encoding=int`: the same task, by its number.
    task = {"genai": "RETRIEVAL_DOCUMENT", "generativeai": 2}[sdk]
    assert {req["taskType"] for r in sent for req in r["requests"]} == {task}


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize(("directive", "code", "tries"), [
    ("#sim-embed:error=500", "llm_error", 2),
    ("#sim-embed:error=400", "llm_error", 1),
    ("#sim-embed:hang", "llm_timeout", 2),
])
def test_embed_errors_map_to_the_same_codes_and_retries(sdk: str, directive: str, code: str,
                                                       tries: int, simulator_url: str) -> None:
    text = f"{directive} {marker()}"
    client = make_client(sdk, simulator_url, timeout_s=0.5, retries=1)
    with pytest.raises(LLMError) as caught:
        client.embed([text], task="RETRIEVAL_QUERY")
    assert caught.value.code == code
    assert len(requests_with(simulator_url, text)) == tries


@pytest.mark.parametrize("sdk", SDKS)
def test_embed_without_a_deadline_is_bounded_by_the_policy(sdk: str, simulator_url: str) -> None:
    # 1 s per try, not less: on a loaded CI box a 0.3 s try once timed out before its
    # request reached the simulator, and the count below saw 2 of 3.
    client = make_client(sdk, simulator_url, timeout_s=1.0, retries=2)
    policy_budget = RetryPolicy(timeout_s=1.0, retries=2, backoff_s=0.05).budget_s()
    text = f"#sim-embed:hang {marker()}"
    started = time.monotonic()
    with pytest.raises(LLMTimeout):
        client.embed([text], task="RETRIEVAL_QUERY")
    assert time.monotonic() - started < policy_budget + 5  # generous: a bound, not a speed
    assert len(requests_with(simulator_url, text)) == 3


@pytest.mark.parametrize("sdk", SDKS)
def test_embed_rejects_an_unknown_task_before_any_request(sdk: str, simulator_url: str) -> None:
    with pytest.raises(ValueError, match="unknown embedding task"):
        make_client(sdk, simulator_url).embed(["x"], task="retrieval")
