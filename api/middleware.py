"""The runbook's request watchdog: no HTTP request may take longer than
MYSISTERDB_REQUEST_TIMEOUT. Past it the client gets 504 {"error": …} and the server goes on
serving; the abandoned handler's own timeouts (Redis, broker) end it soon after.

And the store guard: while Redis does not answer (`StoreMonitor`: no PING answered for
DOWN_AFTER_S), every request that needs it gets 503 store_unavailable at once, those
already in flight included (their handlers are abandoned; a handler's own Redis timeout
ends its thread soon after). A frozen Redis (SIGSTOP, a full disk, a network partition)
accepts connections and never answers, so one request could otherwise wait out several
timeouts in a row (a connection check, the command, a transaction's recovery read): 7.6 s
was seen. The guard keeps the runbook's promise of a 503 within 2 s. Health, the time and
the pages do not need Redis and are not guarded.

Two kinds of request wait on purpose, and bound themselves: a long-poll gets the timeout
plus its `wait` (at most 30 s); an SSE stream (`/api/jobs/{id}/events`) is not watched, as
it ends by itself (final state, or after MYSISTERDB_SSE_MAX_S, 300 s, and every Redis
call in it has a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.background import RedisLoop
from core import redis_sentinel
from core.errors import StoreUnavailable
from core.redis_client import DEFAULT_URL

logger = logging.getLogger(__name__)

TIMEOUT_BODY = json.dumps({"error": {
    "code": "request_timeout",
    "message": "処理がタイムアウトしました。しばらくしてからもう一度試してください。"}},
    ensure_ascii=False).encode()


STORE_DOWN_BODY = json.dumps({"error": {"code": StoreUnavailable.code,
                                        "message": StoreUnavailable.default_message}},
                             ensure_ascii=False).encode()
PROBE_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 0.5
DOWN_AFTER_S = 0.6  # no PING answered for this long: Redis is down (noticed within ~0.8 s)
UNGUARDED = {"/api/health", "/api/current-time", "/", "/signin", "/signin/script.js",
             "/api/session", "/favicon.ico", "/openapi.json", "/docs", "/redoc"}
UNGUARDED_PREFIXES = ("/static/", "/docs/assets/")

EVENTS_PATH = re.compile(r"^/api/jobs/[^/]+/events$")
JOB_PATH = re.compile(r"^/api/jobs/[^/]+$")
# Import and branch index every message they write: MYSISTERDB_IMPORT_TIMEOUT_S (they stop
# themselves before it, storing nothing).
TRANSFER_PATH = re.compile(r"^/api/conversations/(import|[^/]+/branch)$")
MAX_WAIT_S = 30.0

Budget = Callable[[Scope], "float | None"]


def request_budget(timeout_s: float, *, transfer_s: float | None = None) -> Budget:
    """How long a request may take; None: it bounds itself (an SSE stream)."""
    def budget(scope: Scope) -> float | None:
        path = scope.get("path", "")
        if EVENTS_PATH.match(path):
            return None
        if transfer_s is not None and scope.get("method") == "POST" and TRANSFER_PATH.match(path):
            return max(timeout_s, transfer_s)
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


class StoreMonitor(RedisLoop):
    """Whether Redis answers, known within a second: a PING every PROBE_INTERVAL_S on its
    own connection (asyncio: a frozen Redis holds no thread and no event loop)."""

    name = "store-monitor"

    def __init__(self, *, url: str | None) -> None:
        super().__init__(
            redis_sentinel.async_client(url or "", timeout_s=PROBE_TIMEOUT_S)
            if redis_sentinel.is_sentinel(url) else
            aredis.Redis.from_url(url or DEFAULT_URL, socket_timeout=PROBE_TIMEOUT_S,
                                  socket_connect_timeout=PROBE_TIMEOUT_S))
        self.down = asyncio.Event()
        self._recheck: asyncio.Task[bool] | None = None

    async def answers_now(self) -> bool:
        """Asked by a request that finds the store down, before it is refused: the last probe
        may be up to PROBE_INTERVAL_S + PROBE_TIMEOUT_S old, and Redis may be back already
        (health, which pings on its own, can say so first). Requests arriving together share
        one PING, so an outage costs each of them at most PROBE_TIMEOUT_S."""
        if not self.down.is_set():
            return True
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self._ping())
        return await asyncio.shield(self._recheck)

    async def _ping(self) -> bool:
        try:
            await asyncio.wait_for(self.client.ping(), PROBE_TIMEOUT_S)
        except Exception:  # any failure to answer counts
            return False
        self._mark_up()
        return True

    def _mark_up(self) -> None:
        if self.down.is_set():
            logger.warning("redis answers again")
            self.down.clear()

    async def run(self) -> None:
        """PING for ever; the store is down after DOWN_AFTER_S without an answer."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            try:
                await asyncio.wait_for(self.client.ping(), PROBE_TIMEOUT_S)
            except Exception as exc:  # any failure to answer counts
                if loop.time() - last_ok >= DOWN_AFTER_S and not self.down.is_set():
                    logger.error("redis does not answer (%s): requests that need it get 503 "
                                 "at once", type(exc).__name__)
                    self.down.set()
            else:
                last_ok = loop.time()
                self._mark_up()
            await asyncio.sleep(PROBE_INTERVAL_S)


def guarded(scope: Scope) -> bool:
    path = scope.get("path", "")
    return path not in UNGUARDED and not path.startswith(UNGUARDED_PREFIXES)


class RequestTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, timeout_s: float, budget: Budget | None = None,
                 store: StoreMonitor | None = None) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.budget = budget or (lambda _scope: timeout_s)
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        limit_s = self.budget(scope)
        outcome = await self._run(self.app(scope, receive, tracking_send), limit_s,
                                  guard=self.store is not None and guarded(scope))
        if outcome == "ok":
            return
        what = (f"exceeded {limit_s:.1f} s: answered 504" if outcome == "timeout"
                else "cut: redis does not answer: answered 503")
        logger.error("request %s %s %s", scope.get("method"), scope.get("path"), what)
        if not started:  # once headers are out, all we can do is stop
            await send_error(send, 504 if outcome == "timeout" else 503,
                             TIMEOUT_BODY if outcome == "timeout" else STORE_DOWN_BODY)

    async def _run(self, handler: Any, limit_s: float | None, *, guard: bool) -> str:
        """"ok", "timeout" (the budget ran out) or "store_down" (Redis stopped answering)."""
        if guard and self.store is not None and not await self.store.answers_now():
            handler.close()  # never started: Redis is down, refuse at once
            return "store_down"
        task = asyncio.ensure_future(handler)
        waits: set[asyncio.Future[Any]] = {task}
        if guard:
            assert self.store is not None
            waits.add(asyncio.ensure_future(self.store.down.wait()))
        try:
            done, _ = await asyncio.wait(waits, timeout=limit_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits - {task}:
                waiting.cancel()
        if task in done:
            task.result()  # the handler's own exception, if any, goes on up
            return "ok"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return "store_down" if done else "timeout"


async def send_error(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
