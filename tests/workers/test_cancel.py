"""README: a cancel really stops the prompt. Seen from outside the worker, twice over: the model
(the simulator) sees its stream closed while it was still holding it open, long before the
Gemini timeout would have closed it, and the pool slot is free at once: with both slots held,
a third conversation's prompt runs to its end while the other hold is still open."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from mysisterdb.redis_server import RedisServer
from tests.conftest import own_stack
from tests.procs import Stack, wait_for

CANCEL_DB = 15
GEMINI_TIMEOUT_S = 20  # far above the waits below: only the cancel can close the stream
HOLD_MAX_S = 40  # the other slot stays held through the whole test
CLOSED_WITHIN_S = 5.0  # termination, the SDK's socket closing and Starlette seeing it


@pytest.fixture(scope="module")
def cancel_stack(redis_server: RedisServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=CANCEL_DB, name="cancel", extra={
        "MYSISTERDB_GEMINI_TIMEOUT": str(GEMINI_TIMEOUT_S),
        "MYSISTERDB_TASK_SOFT_TIME_LIMIT": str(GEMINI_TIMEOUT_S + 10),
        "MYSISTERDB_TASK_TIME_LIMIT": str(GEMINI_TIMEOUT_S + 15),
        "MYSISTERDB_SIM_HOLD_MAX_S": str(HOLD_MAX_S),
        "MYSISTERDB_WORKER_CONCURRENCY": "2",
        "MYSISTERDB_WORKER_MIN_CONCURRENCY": "2"})


def hold_state(stack: Stack, name: str) -> str:
    return str(httpx.get(f"{stack.sim_url}/_sim/holds/{name}", timeout=5).json()["state"])


def held(stack: Stack, name: str) -> str:
    """A prompt in a conversation of its own whose stream is held after its first chunk."""
    job = stack.submit(f"ずっと話してて #sim:hold={name}", conversation_id=name)
    stack.wait_job(job["id"], timeout_s=30, until=lambda j: bool(j["partial_reply"]))
    assert hold_state(stack, name) == "held"
    return str(job["id"])


def test_a_cancel_closes_the_model_stream_and_frees_the_slot_at_once(cancel_stack: Stack) -> None:
    stack, run = cancel_stack, uuid.uuid4().hex[:8]
    cancelled, kept = held(stack, f"cut-{run}"), held(stack, f"kept-{run}")

    r = httpx.post(f"{stack.api_url}/api/jobs/{cancelled}/cancel", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    wait_for(lambda: hold_state(stack, f"cut-{run}") == "closed", timeout_s=CLOSED_WITHIN_S,
             what="the simulator to see the cancelled prompt's stream closed")

    # Both slots were taken; the cancelled one serves the next prompt while the other holds.
    after = stack.submit("つぎ", conversation_id=f"next-{run}")
    assert stack.wait_job(after["id"], timeout_s=30)["status"] == "completed"
    assert hold_state(stack, f"kept-{run}") == "held"
    assert stack.job(cancelled)["status"] == "cancelled"

    httpx.post(f"{stack.sim_url}/_sim/release/kept-{run}", timeout=5).raise_for_status()
    assert stack.wait_job(kept, timeout_s=30)["status"] == "completed"
