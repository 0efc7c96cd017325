"""The reply reaches the job while Gemini is still writing it, through the whole stack; and the
google-generativeai client still runs the whole stack (MYSISTERDB_GEMINI_SDK=generativeai)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mysisterdb.redis_server import RedisServer
from mysisterdb.simulator import reply_chunks
from tests.conftest import own_stack
from tests.procs import Stack

FIRST_CHUNK = reply_chunks("")[0]
GENERATIVEAI_DB = 2  # its own database: its worker must not take the default stack's jobs


def hold_state(stack: Stack, name: str) -> str:
    state = httpx.get(f"{stack.sim_url}/_sim/holds/{name}", timeout=5).json()["state"]
    assert isinstance(state, str)
    return state


def calls_asking(stack: Stack, text: str) -> list[dict[str, Any]]:
    calls = httpx.get(f"{stack.sim_url}/_sim/calls", timeout=5).json()
    return [c for c in calls if isinstance(c["body"], dict) and c["body"].get("contents")
            and text in str(c["body"]["contents"][-1])]


def test_partial_reply_shows_the_first_chunk_while_gemini_still_streams(
        stack: Stack, conversation_id: str) -> None:
    name = f"hold-{conversation_id}"
    job = stack.submit(f"ゆっくり話して #sim:hold={name}", conversation_id=conversation_id)
    seen = stack.wait_job(job["id"], until=lambda j: bool(j["partial_reply"]))
    assert (seen["status"], seen["partial_reply"]) == ("in_progress", FIRST_CHUNK)
    # The simulator still holds the rest of the stream: the text came while it was open.
    assert hold_state(stack, name) == "held"
    httpx.post(f"{stack.sim_url}/_sim/release/{name}", timeout=5)
    done = stack.wait_job(job["id"])
    assert done["status"] == "completed" and done["reply"].startswith(FIRST_CHUNK)
    assert done["reply"] == "".join(reply_chunks(f"ゆっくり話して #sim:hold={name}"))
    # The default SDK, google-genai, asked for Server-Sent Events.
    [call] = calls_asking(stack, name)
    assert call["path"].endswith(":streamGenerateContent") and "alt=sse" in call["query"]


@pytest.fixture(scope="module")
def generativeai_stack(redis_server: RedisServer,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=GENERATIVEAI_DB, name="generativeai",
                         extra={"MYSISTERDB_GEMINI_SDK": "generativeai"})


def test_generativeai_stack_answers_and_keeps_a_stalled_reply(generativeai_stack: Stack,
                                                              conversation_id: str) -> None:
    stack = generativeai_stack
    ok = stack.submit("こんにちは", conversation_id=conversation_id)
    assert stack.wait_job(ok["id"])["reply"] == "".join(reply_chunks("こんにちは"))
    stalled = stack.wait_job(stack.submit("#sim:stall", conversation_id=conversation_id)["id"])
    assert (stalled["status"], stalled["partial_reply"]) == ("incomplete", FIRST_CHUNK)
    assert stalled["error"]["code"] in ("llm_timeout", "timeout")
    # google-generativeai asked for the JSON-array stream on v1beta, not SSE.
    [call] = calls_asking(stack, "こんにちは")
    assert call["path"].startswith("/v1beta/") and "alt=sse" not in call["query"]


def test_generativeai_stack_retries_a_server_error_once_then_fails(
        generativeai_stack: Stack, conversation_id: str) -> None:
    marker = f"#sim:error=500 {conversation_id}"
    done = generativeai_stack.wait_job(
        generativeai_stack.submit(marker, conversation_id=conversation_id)["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "llm_error")
    assert len(generativeai_stack.sim_requests_containing(marker)) == 2
