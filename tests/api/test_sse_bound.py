"""README: an event stream lasts at most MYSISTERDB_SSE_MAX_S (300 s), its job final or not,
and EventSource resumes it with Last-Event-ID. Here 2 s, on a stack of its own, following a
prompt the simulator answers after SLEEP_S (longer limits than the test stacks' so that the
job sits unchanged, in progress, across several streams)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from mysisterdb.redis_server import RedisServer
from tests.api.test_follow import Event, read_events
from tests.conftest import own_stack
from tests.procs import Stack

SSE_BOUND_DB = 12
SSE_MAX_S = 2.0
MARGIN_S = 1.0  # a loaded 2-core machine; the prompt's reply comes SLEEP_S after it starts
SLEEP_S = 7


@pytest.fixture(scope="module")
def sse_stack(redis_server: RedisServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=SSE_BOUND_DB, name="sse-bound",
                         extra={"MYSISTERDB_SSE_MAX_S": str(SSE_MAX_S),
                                "MYSISTERDB_GEMINI_TIMEOUT": "15",
                                "MYSISTERDB_TASK_SOFT_TIME_LIMIT": "20",
                                "MYSISTERDB_TASK_TIME_LIMIT": "25"})


def stream(stack: Stack, job_id: str, last_event_id: int | None) -> tuple[list[Event], float]:
    """One connection, as EventSource makes it: its events and how long it lasted."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    started = time.monotonic()
    with httpx.stream("GET", f"{stack.api_url}/api/jobs/{job_id}/events", headers=headers,
                      timeout=30) as r:
        assert r.status_code == 200, r.read()
        events = list(read_events(r))
    return events, time.monotonic() - started


def test_a_stream_ends_after_its_bound_and_resumes_with_last_event_id(
        sse_stack: Stack, conversation_id: str) -> None:
    stack = sse_stack
    job = stack.submit(f"ゆっくり考えて #sim:sleep={SLEEP_S}", conversation_id=conversation_id)
    stack.wait_job(job["id"], until=lambda j: j["status"] == "in_progress")
    events, lasted = stream(stack, job["id"], None)
    # Ended by the bound, not by the job: it is still in progress, unchanged since.
    assert SSE_MAX_S <= lasted < SSE_MAX_S + MARGIN_S, lasted
    assert events and events[-1].job["status"] == "in_progress"
    assert stack.job(job["id"]) == events[-1].job
    # Reconnect after reconnect with the last id seen, until the final state came.
    streams = 1
    while events[-1].job["status"] == "in_progress":
        last = events[-1].id
        more, lasted = stream(stack, job["id"], last)
        streams += 1
        assert streams <= SLEEP_S, "never final"
        assert lasted < SSE_MAX_S + MARGIN_S, lasted
        assert all(e.id > last for e in more)  # continues past it, nothing again
        events += more
    assert streams >= 3  # the job outlived two bounds
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)) and all(e.id == e.job["sequence"] for e in events)
    assert events[-1].job["status"] == "completed" and events[-1].job["reply"]
    assert events[-1].job == stack.job(job["id"])
    # The client has the final state: its next reconnect gets 204 and EventSource stops.
    done = httpx.get(f"{stack.api_url}/api/jobs/{job['id']}/events", timeout=5,
                     headers={"Last-Event-ID": str(events[-1].id)})
    assert done.status_code == 204
