"""Bounded input, before anything else reads it (the outermost middleware, pure ASGI).

- The body: at most MYSISTERDB_MAX_BODY_BYTES (sized from the longest message), or a route's
  own limit (`ROUTE_LIMITS`: the conversation import gets MYSISTERDB_MAX_IMPORT_BYTES, the
  sign-in form 4 KB). A Content-Length above it is refused at once, unread; a
  chunked body is counted while it arrives and cut at the limit. Either way 413
  payload_too_large with `Connection: close`, before parsing and before authentication:
  FastAPI reads a route's body before it runs the route's dependencies, and uvicorn reads
  from the socket only as fast as the app asks (h11 flow control), so a 1 GB upload costs
  the API one chunk of memory.
- The query string: at most MYSISTERDB_MAX_QUERY_BYTES (414 uri_too_long); the headers
  together at most MYSISTERDB_MAX_HEADER_BYTES (431 headers_too_large). uvicorn bounds what
  it buffers of a request line and headers still arriving by the same number
  (h11_max_incomplete_event_size, mysisterdb/cli.py), but lets through headers that arrive
  in one read (up to 64 KB): the check here covers those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.security import refuse
from core.errors import HeadersTooLarge, MySisterDBError, PayloadTooLarge, UriTooLong
from core.settings import Settings

logger = logging.getLogger(__name__)

SIGN_IN_FORM_BYTES = 4096  # a token and a path
# Routes whose bodies have a limit of their own: path -> that limit from the settings. A
# path ending in "/" covers everything below it.
ROUTE_LIMITS: dict[str, Callable[[Settings], int]] = {
    "/api/conversations/import": lambda s: s.max_import_bytes,
    "/signin": lambda _: SIGN_IN_FORM_BYTES,
}


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit. An HTTPException because FastAPI
    lets those through its body parsing (anything else becomes a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=PayloadTooLarge.status_code)
        self.limit = limit


def too_large_message(limit: int) -> str:
    return f"リクエストが大きすぎます（上限 {limit:,} バイト）。小さくしてもう一度送ってください。"


async def on_body_too_large(request: Request, exc: Exception) -> JSONResponse:
    """The route's own reading hit the limit: the same answer as the middleware's."""
    assert isinstance(exc, BodyTooLarge)
    return JSONResponse({"error": {"code": PayloadTooLarge.code,
                                   "message": too_large_message(exc.limit)}},
                        status_code=413, headers={"Connection": "close"})


def route_limits(settings: Settings) -> dict[str, int]:
    return {path: limit(settings) for path, limit in ROUTE_LIMITS.items()}


async def send_refusal(send: Send, error: MySisterDBError, *, close: bool = False) -> None:
    await refuse(send, error.status_code, error.code, error.message, close=close)


def declared_length(scope: Scope) -> int | None:
    raw = Headers(scope=scope).get("content-length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


class BoundedInput:
    def __init__(self, app: ASGIApp, *, max_body: int, routes: dict[str, int],
                 max_query: int, max_headers: int) -> None:
        self.app = app
        self.max_body = max_body
        self.routes = routes
        self.max_query = max_query
        self.max_headers = max_headers

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.routes.items():
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                return limit
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_query:
            logger.warning("refused %s %s: query string over %d bytes", scope["method"],
                           scope["path"][:200], self.max_query)
            await send_refusal(send, UriTooLong())
            return
        if sum(len(k) + len(v) + 4 for k, v in scope.get("headers", [])) > self.max_headers:
            logger.warning("refused %s %s: headers over %d bytes", scope["method"],
                           scope["path"][:200], self.max_headers)
            await send_refusal(send, HeadersTooLarge())
            return
        limit = self.limit_for(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            logger.warning("refused %s %s: Content-Length %d over %d", scope["method"],
                           scope["path"][:200], declared, limit)
            await send_refusal(send, PayloadTooLarge(too_large_message(limit)), close=True)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    logger.warning("cut %s %s: body over %d bytes", scope["method"],
                                   scope["path"][:200], limit)
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside a route (none of ours): answer it here
            if not started:
                await send_refusal(send, PayloadTooLarge(too_large_message(exc.limit)),
                                   close=True)
