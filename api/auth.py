"""Who is asking, for every route: one dependency of the whole app (`authenticate`), so a
route added later is closed until it is listed as open.

    open      /api/health (details only for the operator), /api/current-time (the runbook's
              monitors), the sign-in page and its script, /api/session (signing in and out,
              who is signed in) and its preview, the page's static files and the API
              explorers' scripts
    page      /, /docs, /redoc: without a session the browser is sent to /signin?next=…
    document  /openapi.json: any token or session (a person's or the operator's)
    operator  /api/queue, /api/incidents, /metrics: the operator token (or the one person
              of the open and generated modes)
    person    everything else: a person's token (`Authorization: Bearer`) or the page's
              session cookie; each route then shows only that person's conversations

No credentials (or wrong ones): 401 `unauthorized` with `WWW-Authenticate: Bearer`; a person
on an operator route: 403 `forbidden`. The caller is kept in `request.state.caller`.
A session cookie is checked against Redis (was it signed out? core/sessions.py): while Redis
does not answer, a request with a cookie is a 503, except on the open routes that need no
caller (health, the sign-in page), which go on as if there were no cookie.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import redis
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from core.access import SIGN_IN_PATH, Access, Caller
from core.errors import Forbidden, MySisterDBError, Unauthorized
from core.sessions import Sessions

SESSION_COOKIE = "msdb_session"  # the one place its name is written
# Over https the cookie takes the __Host- prefix: the browser then keeps it only if it is
# Secure, for this host alone (no Domain) and path /, so no sibling site can plant one.
SECURE_SESSION_COOKIE = f"__Host-{SESSION_COOKIE}"
SESSION_COOKIES = (SECURE_SESSION_COOKIE, SESSION_COOKIE)
SESSION_PATHS = {"/api/session", "/api/session/preview"}
OPEN_PATHS = {"/api/health", "/api/current-time", SIGN_IN_PATH, f"{SIGN_IN_PATH}/script.js",
              "/favicon.ico", *SESSION_PATHS}
OPEN_PREFIXES = ("/static/", "/docs/assets/")
PAGE_PATHS = {"/", "/docs", "/redoc"}
DOCUMENT_PATHS = {"/openapi.json"}
OPERATOR_PATHS = {"/api/queue", "/api/incidents", "/metrics"}


class SignInRequired(MySisterDBError):
    """The page without a session: a redirect to the sign-in form (not a JSON error)."""

    status_code = 303
    code = "sign_in_required"

    def __init__(self, next_path: str) -> None:
        super().__init__("サインインしてください。")
        self.location = f"{SIGN_IN_PATH}?next={quote(next_path, safe='/')}"  # ?, &, = encoded


def route_path(request: Request) -> str:
    route = request.scope.get("route")
    return route.path if isinstance(route, Route) else request.url.path


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def sessions_of(request: Request) -> Sessions:
    return request.app.state.sessions  # type: ignore[no-any-return]


async def identify(request: Request, access: Access) -> Caller | None:
    """From the bearer token, else the session cookie, else who an anonymous caller is.
    A wrong token is not overridden by a cookie: the client meant the token."""
    token = bearer(request)
    if token is not None:
        return access.identify(token)
    cookie = next((request.cookies[n] for n in SESSION_COOKIES if n in request.cookies), None)
    if cookie and access.needs_credentials:
        found = await run_in_threadpool(sessions_of(request).caller, cookie)
        if found is not None:
            return found
    return access.anonymous()


async def authenticate(request: Request) -> None:
    access: Access = request.app.state.access
    path = route_path(request)
    is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
    try:
        caller = await identify(request, access)
    except (redis.ConnectionError, redis.TimeoutError):
        if not is_open or path in SESSION_PATHS:
            raise  # 503: a session that may have been signed out is never honoured
        caller = None
    request.state.caller = caller
    if is_open:
        return
    if caller is None:
        if path in PAGE_PATHS:  # back to the same page (its conversation) once signed in
            query = request.url.query
            raise SignInRequired(request.url.path + (f"?{query}" if query else ""))
        raise Unauthorized()
    if path in OPERATOR_PATHS:
        if not caller.operator:
            raise Forbidden("運用者のトークン（MYSISTERDB_OPERATOR_TOKEN）が必要です。")
        return
    if caller.person is None and path not in PAGE_PATHS | DOCUMENT_PATHS:
        raise Forbidden("運用者のトークンでは会話を扱えません。個人のトークンを使ってください。")


def caller_of(request: Request) -> Caller:
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None or caller.person is None:  # authenticate let it through: a bug
        raise Unauthorized()
    return caller


def document_security(app: FastAPI) -> None:
    """State in the OpenAPI document how each operation is authenticated: a bearer token, or
    the page's session cookie; the open ones need nothing."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A person's token (MYSISTERDB_API_TOKENS), or the "
                                      "operator's for /api/queue, /api/incidents, /metrics"},
            "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                        "description": "Set by POST /api/session (the chat page)"}}
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"session": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
