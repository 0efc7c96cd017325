"""What runs between POST /api/chat and its 202 (issue 21, "submit in single-digit
milliseconds"): one publish per prompt (no task-sent event beside it), and one thread-pool hop
(the route) rather than one per dependency. The figures are in bench/burst_bench.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import redis
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.routes import chat
from tests.procs import Stack


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Celery events as kombu's Redis fan-out carries them: a message with a base64 body,
    one event or (the worker buffers its task events) a list of them."""
    try:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    except (ValueError, KeyError, TypeError):
        return []
    return [e for e in (body if isinstance(body, list) else [body]) if isinstance(e, dict)]


def test_a_submit_publishes_its_prompt_and_no_sent_event(stack: Stack, conversation_id: str,
                                                          ) -> None:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev*")
    try:
        pubsub.get_message(timeout=5)  # the subscription's confirmation
        job = stack.submit("こんにちは", conversation_id=conversation_id)
        assert stack.wait_job(job["id"])["status"] == "completed"
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        # The worker's events for the prompt come through the same fan-out; once it has
        # said the task succeeded, a sent event (published before it) would have come too.
        while "task-succeeded" not in seen and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "pmessage":
                seen |= {e.get("type", "") for e in events_of(message["data"])
                         if e.get("uuid") == job["id"]}
    finally:
        pubsub.close()
        client.close()
    assert {"task-received", "task-succeeded"} <= seen, seen
    assert "task-sent" not in seen


def sub_dependencies(dependant: Dependant) -> list[Dependant]:
    found = []
    for sub in dependant.dependencies:
        found += [sub, *sub_dependencies(sub)]
    return found


def test_the_submit_routes_dependencies_run_on_the_event_loop() -> None:
    """FastAPI runs each plain-function dependency in its thread pool: a hop per dependency
    and request. The submit's only assemble objects; only the route touches Redis."""
    route = next(r for r in chat.router.routes
                 if isinstance(r, APIRoute) and r.path.endswith("/chat"))
    calls = [d.call for d in sub_dependencies(route.dependant) if d.call is not None]
    assert calls
    plain = [getattr(c, "__name__", repr(c)) for c in calls
             if not asyncio.iscoroutinefunction(c)]
    assert plain == []
