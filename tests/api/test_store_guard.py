"""The store guard refuses a request only while Redis really does not answer: a request that
arrives just after Redis came back is served, even before the guard's next probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

from api.middleware import PROBE_TIMEOUT_S, RequestTimeoutMiddleware, StoreMonitor
from mysisterdb.redis_server import RedisServer, free_port


async def call(app: RequestTimeoutMiddleware, path: str) -> int:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "query_string": b""},
              receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def guarded_app(url: str) -> tuple[RequestTimeoutMiddleware, StoreMonitor]:
    monitor = StoreMonitor(url=url)
    monitor.down.set()  # what the last probe said, before Redis came back
    return RequestTimeoutMiddleware(ok_app, timeout_s=5, store=monitor), monitor


def test_guard_serves_a_request_once_redis_answers_again(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[int, bool]:
        app, monitor = guarded_app(redis_server.url)
        try:
            return await call(app, "/api/jobs/x"), monitor.down.is_set()
        finally:
            await monitor.stop()

    status, still_down = asyncio.run(scenario())
    assert status == 200 and still_down is False


def test_guard_refuses_at_once_while_redis_does_not_answer() -> None:
    async def scenario() -> list[int]:
        app, monitor = guarded_app(f"redis://127.0.0.1:{free_port()}/0")
        try:  # arriving together, they share one check
            return list(await asyncio.gather(*(call(app, "/api/chat") for _ in range(20))))
        finally:
            await monitor.stop()

    started = time.monotonic()
    statuses = asyncio.run(scenario())
    assert statuses == [503] * 20
    # The runbook's promise is 503 within 2 s; one shared PING costs at most PROBE_TIMEOUT_S.
    assert time.monotonic() - started < PROBE_TIMEOUT_S + 1.0


def test_guard_never_checks_unguarded_paths() -> None:
    async def scenario() -> int:
        app, monitor = guarded_app(f"redis://127.0.0.1:{free_port()}/0")
        try:
            return await call(app, "/api/health")
        finally:
            await monitor.stop()

    assert asyncio.run(scenario()) == 200
