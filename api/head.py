"""HEAD answered wherever GET is (RFC 9110 §9.3.2: GET's status and headers, no body).

Starlette's plain routes add HEAD to GET, FastAPI's APIRoute does not (fastapi#1773, open),
so `HEAD /api/health` from an uptime monitor got 405. This outermost middleware hands a HEAD
request on as the GET it stands for, so every layer (host check, access, the route, the
store guard) answers it exactly as that GET, and drops the body on the way out (its
Content-Length stays GET's, as the RFC allows). The OpenAPI document is untouched: HEAD is
implied by GET there too. Once the headers are out the application is told the client has
gone (`http.disconnect`), so a HEAD of the event stream ends at once instead of streaming
for nobody.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = asyncio.Event()

        async def send_headers_only(message: Message) -> None:
            if answered.is_set():
                return
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                answered.set()
            elif message["type"] != "http.response.body":
                await send(message)

        async def receive_until_answered() -> Message:
            if answered.is_set():
                return DISCONNECT
            message = asyncio.ensure_future(receive())
            gone = asyncio.ensure_future(answered.wait())
            await asyncio.wait({message, gone}, return_when=asyncio.FIRST_COMPLETED)
            if message.done():
                gone.cancel()
                return message.result()
            message.cancel()
            return DISCONNECT

        await self.app({**scope, "method": "GET"}, receive_until_answered, send_headers_only)
