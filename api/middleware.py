"""The runbook's request watchdog: no HTTP request may take longer than
MYSISTERDB_REQUEST_TIMEOUT. Past it the client gets 504 {"error": …} and the server goes on
serving; the abandoned handler's own timeouts (Redis, broker) end it soon after.

Two kinds of request wait on purpose, and bound themselves: a long-poll gets the timeout
plus its `wait` (at most 30 s); an SSE stream (`/api/jobs/{id}/events`) is not watched, as
it ends by itself (final state, or after 300 s, and every Redis call in it has a timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

TIMEOUT_BODY = json.dumps({"error": {
    "code": "request_timeout",
    "message": "処理がタイムアウトしました。しばらくしてからもう一度試してください。"}},
    ensure_ascii=False).encode()


EVENTS_PATH = re.compile(r"^/api/jobs/[^/]+/events$")
JOB_PATH = re.compile(r"^/api/jobs/[^/]+$")
MAX_WAIT_S = 30.0

Budget = Callable[[Scope], "float | None"]


def request_budget(timeout_s: float) -> Budget:
    """How long a request may take; None: it bounds itself (an SSE stream)."""
    def budget(scope: Scope) -> float | None:
        path = scope.get("path", "")
        if EVENTS_PATH.match(path):
            return None
        if scope.get("method") == "GET" and JOB_PATH.match(path):
            return timeout_s + requested_wait(scope)
        return timeout_s

    return budget


def requested_wait(scope: Scope) -> float:
    raw = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("wait", ["0"])[-1]
    try:
        return min(max(float(raw), 0.0), MAX_WAIT_S)
    except ValueError:
        return 0.0  # the route answers 422


class RequestTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, timeout_s: float, budget: Budget | None = None) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.budget = budget or (lambda _scope: timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit_s = self.budget(scope)
        if limit_s is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), limit_s)
        except TimeoutError:
            logger.error("request %s %s exceeded %.1f s: answered 504", scope.get("method"),
                         scope.get("path"), limit_s)
            if not started:  # once headers are out, all we can do is stop
                await send_504(send)


async def send_504(send: Send) -> None:
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(TIMEOUT_BODY)).encode())]})
    await send({"type": "http.response.body", "body": TIMEOUT_BODY})
