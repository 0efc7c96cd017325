"""What keeps a browser from being turned against the API (pure ASGI middlewares).

- TrustedHosts: only the host names in MYSISTERDB_ALLOWED_HOSTS are served (400 otherwise):
  a page that re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name as
  Host, and is refused before any route runs. Like Starlette's TrustedHostMiddleware, with
  IPv6 literals ("[::1]:8000") understood and our error body.
- SameOrigin: a state-changing request (any method but GET/HEAD/OPTIONS, and the runbook's
  GET /api/reset_conversation) coming from a page of another origin is refused (403): its
  Origin is not the API's own (nor in MYSISTERDB_CORS_ORIGINS), or the browser says it is
  cross-site / same-site (Sec-Fetch-Site; another port of localhost is "same-site"). Clients
  that are not browsers send neither header and are judged by their token alone.
- LocalOnly (open mode only): the API trusts that nobody but this machine talks to it, so a
  request that shows a proxy on its way (Forwarded, X-Forwarded-*, X-Real-IP, or a Host
  that is not a loopback name) is refused: 403 proxy_needs_token, which says to set tokens.
- SecurityHeaders: every answer gets nosniff, a same-origin referrer policy and no framing
  (and HSTS over https);
  an HTML page without its own Content-Security-Policy gets one that allows only its own files and the
  inline blocks it was sent with (by hash), and nothing from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.access import is_loopback
from core.errors import ProxyNeedsToken

logger = logging.getLogger(__name__)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
STATE_CHANGING_GETS = {"/api/reset_conversation"}
DEFAULT_PORTS = {"http": 80, "https": 443}
INLINE = re.compile(rb"<(script|style)(\s[^>]*)?>(.*?)</\1>", re.S | re.I)
BASE_CSP = ("default-src 'none'; script-src 'self'{scripts}; style-src 'self'{styles}; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
HSTS = (b"strict-transport-security", b"max-age=31536000")
FORWARDING_HEADERS = {b"forwarded", b"x-forwarded-for", b"x-forwarded-proto",
                      b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip"}
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                  (b"x-frame-options", b"DENY")]


async def refuse(send: Send, status: int, code: str, message: str, *,
                 close: bool = False) -> None:
    """An error answer from a middleware (no route ran); `close`: end the connection after
    it (a body left unread)."""
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"connection", b"close")] if close else headers})
    await send({"type": "http.response.body", "body": body})


def host_name(host_header: str) -> str:
    """The name of a Host header value, without the port: "[::1]:8000" -> "::1"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(name: str, allowed: list[str]) -> bool:
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class TrustedHosts:
    def __init__(self, app: ASGIApp, *, allowed: list[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            name = host_name(Headers(scope=scope).get("host", ""))
            if not host_allowed(name, self.allowed):
                logger.warning("refused a request for host %r (not in MYSISTERDB_ALLOWED_HOSTS)",
                               name[:100])
                await refuse(send, 400, "invalid_host",
                             "このホスト名では受け付けていません（MYSISTERDB_ALLOWED_HOSTS）。")
                return
        await self.app(scope, receive, send)


class LocalOnly:
    """Open mode's own guard: only this machine, directly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            names = {name.lower() for name, _ in scope.get("headers", [])}
            host = host_name(Headers(scope=scope).get("host", ""))
            proxied = sorted(n.decode() for n in names & FORWARDING_HEADERS)
            if proxied or not is_loopback(host):
                logger.warning("refused a request through a proxy in open mode (%s): set "
                               "MYSISTERDB_API_TOKENS", ", ".join(proxied) or f"Host {host[:100]!r}")
                error = ProxyNeedsToken()
                await refuse(send, error.status_code, error.code, error.message)
                return
        await self.app(scope, receive, send)


def origin_key(origin: str) -> tuple[str, int] | None:
    parts = urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname.lower(), parts.port or DEFAULT_PORTS[parts.scheme]


def own_origin_key(host_header: str, origin_scheme: str) -> tuple[str, int]:
    """The API's own (host, port) as the request's Host names it; a Host without a port
    (a proxy on 80/443) takes the default port of the Origin's scheme."""
    name = host_name(host_header)
    rest = host_header.strip().rsplit("]", 1)[-1]
    port = rest.rsplit(":", 1)[1] if ":" in rest else ""
    return name, int(port) if port.isdigit() else DEFAULT_PORTS.get(origin_scheme, 80)


def cross_site(headers: Headers, allowed_origins: list[str]) -> bool:
    """Whether a browser sent this request from a page that is not the API's own."""
    # The browser's own word first: a page cannot forge a Sec- header. It also covers a
    # same-origin form POST whose Origin a strict referrer policy serialises as "null".
    if headers.get("sec-fetch-site") == "same-origin":
        return False
    origin = headers.get("origin")
    if origin is not None:
        if origin.rstrip("/") in allowed_origins:
            return False
        key = origin_key(origin)
        if key is None:  # "null" (a sandboxed frame, a file:// page) or garbage
            return True
        return key != own_origin_key(headers.get("host", ""), urlsplit(origin).scheme)
    # No Origin (a GET from an <img>, a link): the browser's own word, when it sends it.
    return headers.get("sec-fetch-site", "none") in ("cross-site", "same-site")


class SameOrigin:
    def __init__(self, app: ASGIApp, *, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and changes_state(scope)
                and cross_site(Headers(scope=scope), self.allowed_origins)):
            logger.warning("refused a cross-site %s %s", scope["method"], scope["path"])
            await refuse(send, 403, "cross_site", "ほかのサイトのページからの操作は受け付けません。")
            return
        await self.app(scope, receive, send)


def changes_state(scope: Scope) -> bool:
    return scope["method"] not in SAFE_METHODS or scope["path"] in STATE_CHANGING_GETS


def inline_hashes(body: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"script": [], "style": []}
    for match in INLINE.finditer(body):
        kind, content = match.group(1).lower().decode(), match.group(3)
        if kind == "script" and b"src=" in (match.group(2) or b"").lower():
            continue
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
        found[kind].append(f" 'sha256-{digest}'")
    return found


def page_csp(body: bytes) -> bytes:
    hashes = inline_hashes(body)
    return BASE_CSP.format(scripts="".join(hashes["script"]),
                           styles="".join(hashes["style"])).encode()


class SecurityHeaders:
    """Headers every answer carries; the CSP for an HTML page that did not set its own
    (its inline blocks are hashed, so the whole page is read before it is sent: pages are
    small)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in COMMON_HEADERS if k not in names]
                if scope.get("scheme") == "https":  # as a trusted proxy says (uvicorn)
                    extra.append(HSTS)
                message = {**message, "headers": [*message.get("headers", []), *extra]}
                html = Headers(raw=message["headers"]).get("content-type", "").startswith(
                    "text/html")
                if html and b"content-security-policy" not in names:
                    held.append(message)
                    return
            if held:
                await self._send_page(send, held, message)
                return
            await send(message)

        await self.app(scope, receive, add_headers)

    @staticmethod
    async def _send_page(send: Send, held: list[Message], message: Message) -> None:
        held.append(message)
        if message["type"] == "http.response.body" and message.get("more_body", False):
            return
        start, *bodies = held
        body = b"".join(m.get("body", b"") for m in bodies)
        start["headers"] = [*start["headers"], (b"content-security-policy", page_csp(body))]
        held.clear()
        await send(start)
        await send({"type": "http.response.body", "body": body})
