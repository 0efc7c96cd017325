"""What runs between POST /api/chat and its 202 (issue 21, "submit in single-digit
milliseconds"): one publish per prompt (no Celery task event beside it, neither the API's
task-sent nor, unless Flower asks, the worker's), and one thread-pool hop (the route) rather
than one per dependency. The figures are in bench/burst_bench.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import redis
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.routes import chat
from core.settings import Settings
from taskqueue.app import create_celery
from tests.procs import Stack


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Celery events as kombu's Redis fan-out carries them: a message with a base64 body,
    one event or (the worker buffers its task events) a list of them."""
    try:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    except (ValueError, KeyError, TypeError):
        return []
    return [e for e in (body if isinstance(body, list) else [body]) if isinstance(e, dict)]


def test_a_prompt_sends_no_task_events_until_flower_asks(stack: Stack) -> None:
    """No task-sent event from the API, and none from the worker by default
    (MYSISTERDB_TASK_EVENTS off: a publish each for received, started and succeeded, and the
    parent's handling of them, for Flower alone). Flower switches them on in the running
    workers itself (`enable_events`, every few seconds): then the next prompt's come."""
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    app = create_celery(Settings(redis_url=stack.redis_url))
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev*")
    try:
        pubsub.get_message(timeout=5)  # the subscription's confirmation
        quiet = stack.submit("こんにちは", conversation_id=f"c-{uuid.uuid4().hex[:12]}")
        assert stack.wait_job(quiet["id"])["status"] == "completed"
        # What Flower does when it starts (its --enable_events, on by default).
        assert app.control.enable_events(reply=True, timeout=5)
        asked = stack.submit("こんにちは", conversation_id=f"c-{uuid.uuid4().hex[:12]}")
        assert stack.wait_job(asked["id"])["status"] == "completed"
        # The events of both prompts come through the one fan-out in order: once the second's
        # task-succeeded is in, any of the first would have come before it.
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + 10
        while "task-succeeded" not in seen.get(asked["id"], set()) \
                and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "pmessage":
                for e in events_of(message["data"]):
                    seen.setdefault(e.get("uuid", ""), set()).add(e.get("type", ""))
    finally:
        app.control.disable_events(reply=True, timeout=5)  # the shared stack as it was
        pubsub.close()
        client.close()
    assert quiet["id"] not in seen, seen
    assert {"task-received", "task-started", "task-succeeded"} <= seen[asked["id"]], seen
    assert "task-sent" not in seen[asked["id"]]


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
