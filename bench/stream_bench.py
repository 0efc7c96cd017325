"""How soon Gemini's text reaches the worker with each SDK: time from the request to the
first chunk in `on_text`, for a normal streamed reply (4 chunks 20 ms apart), for a stream the
simulator holds open after its first chunk (`#sim:hold`, released as soon as the chunk
arrives, or by itself after 3 s), and for a stream that stalls after its first chunk
(`#sim:stall`, cut by a 2 s read timeout); plus one embedding request of 100 texts.

Starts its own simulator process; both clients run in this process against it, one after the
other. Prints medians over REPEAT runs and the ratio to google-generativeai (the baseline, the
design's SDK) measured in the same run.

    .venv/bin/python bench/stream_bench.py            # REPEAT=5, about 40 s
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from context.types import Turn  # noqa: E402
from core.errors import LLMError  # noqa: E402
from mysisterdb.redis_server import free_port  # noqa: E402
from tests.conftest import stack_env  # noqa: E402
from tests.procs import http_ok, mysisterdb, start, wait_for  # noqa: E402
from workers.llm import LLMClient, RetryPolicy  # noqa: E402
from workers.runtime import llm_client_class  # noqa: E402

REPEAT = int(os.environ.get("REPEAT", "5"))
SDKS = ("generativeai", "genai")  # the baseline first
READ_TIMEOUT_S = 2.0


def client_for(sdk: str, url: str) -> LLMClient:
    client: LLMClient = llm_client_class(sdk)(
        api_key="bench", model="gemini-3.5-flash", endpoint=url,
        policy=RetryPolicy(timeout_s=READ_TIMEOUT_S, retries=0, backoff_s=0.1),
        embedding_model="gemini-embedding-001", embedding_dim=256)
    return client


def first_chunk_s(client: LLMClient, text: str,
                  on_first: Callable[[], None] = lambda: None) -> float:
    """Seconds from the call to the first piece in on_text; the call's outcome is ignored."""
    started = time.monotonic()
    first: list[float] = []

    def on_text(_piece: str) -> None:
        if not first:
            first.append(time.monotonic() - started)
            on_first()

    with contextlib.suppress(LLMError):  # a stall ends in a timeout: only the first chunk counts
        client.stream(system_instruction="bench", contents=[Turn(role="user", text=text)],
                      deadline=time.monotonic() + 10, on_text=on_text)
    return first[0] if first else float("nan")


def held(client: LLMClient, url: str) -> float:
    name = uuid.uuid4().hex[:8]
    return first_chunk_s(client, f"#sim:hold={name}",
                         lambda: httpx.post(f"{url}/_sim/release/{name}", timeout=5))


def embed_100(client: LLMClient) -> float:
    texts = [f"お兄ちゃんのメッセージ {i}" for i in range(100)]
    started = time.monotonic()
    client.embed(texts, task="RETRIEVAL_DOCUMENT")
    return time.monotonic() - started


CASES: list[tuple[str, Callable[[LLMClient, str], float]]] = [
    ("first chunk, normal reply", lambda c, _url: first_chunk_s(c, "こんにちは")),
    ("first chunk, stream held open", held),
    ("first chunk, stream stalls", lambda c, _url: first_chunk_s(c, "#sim:stall")),
    ("embed 100 texts (one request)", lambda c, _url: embed_100(c)),
]


def measure(url: str) -> dict[tuple[str, str], float]:
    medians: dict[tuple[str, str], float] = {}
    for sdk in SDKS:
        client = client_for(sdk, url)
        first_chunk_s(client, "warm up")  # imports and the first connection are not measured
        for name, case in CASES:
            medians[(sdk, name)] = statistics.median(case(client, url) for _ in range(REPEAT))
    return medians


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = stack_env(redis_url="redis://127.0.0.1:1/0", api_port=free_port(), sim_port=port,
                        log_dir=Path(tmp))
        proc = start("simulator", mysisterdb("simulator"), env=env, log_dir=Path(tmp))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(http_ok(f"{url}/_sim/health"), timeout_s=20, what="simulator")
            medians = measure(url)
        finally:
            proc.stop()
    print(f"median of {REPEAT} runs, read timeout {READ_TIMEOUT_S} s; ratio genai / generativeai")
    print(f"{'case':34} {'generativeai (ms)':>18} {'genai (ms)':>11} {'ratio':>6}")
    for name, _case in CASES:
        base, new = medians[("generativeai", name)], medians[("genai", name)]
        print(f"{name:34} {base * 1000:18.0f} {new * 1000:11.0f} {new / base:6.2f}")


if __name__ == "__main__":
    main()
