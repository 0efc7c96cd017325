"""The runbook's request watchdog: no HTTP request may take longer than
MYSISTERDB_REQUEST_TIMEOUT. Past it the client gets 504 {"error": …} and the server goes on
serving; the abandoned handler's own timeouts (Redis, broker) end it soon after."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

TIMEOUT_BODY = json.dumps({"error": {
    "code": "request_timeout",
    "message": "処理がタイムアウトしました。しばらくしてからもう一度試してください。"}},
    ensure_ascii=False).encode()


class RequestTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout_s)
        except TimeoutError:
            logger.error("request %s %s exceeded %.1f s: answered 504", scope.get("method"),
                         scope.get("path"), self.timeout_s)
            if not started:  # once headers are out, all we can do is stop
                await send_504(send)


async def send_504(send: Send) -> None:
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(TIMEOUT_BODY)).encode())]})
    await send({"type": "http.response.body", "body": TIMEOUT_BODY})
