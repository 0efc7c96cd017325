"""Who is asking, for every route: one dependency of the whole app (`authenticate`), so a
route added later is closed until it is listed as open.

    open      /api/health (details only for the operator), /api/current-time (the runbook's
              monitors), the sign-in page and its script, POST /api/session (signing in), the
              page's static files and the API explorers' scripts
    page      /, /docs, /redoc: without a session the browser is sent to /signin?next=…
    document  /openapi.json: any token or session (a person's or the operator's)
    operator  /api/queue, /api/incidents, /metrics: the operator token (or the one person
              of the open and generated modes)
    person    everything else: a person's token (`Authorization: Bearer`) or the page's
              session cookie; each route then shows only that person's conversations

No credentials (or wrong ones): 401 `unauthorized` with `WWW-Authenticate: Bearer`; a person
on an operator route: 403 `forbidden`. The caller is kept in `request.state.caller`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from starlette.routing import Route

from core.access import SIGN_IN_PATH, Access, Caller
from core.errors import Forbidden, MySisterDBError, Unauthorized

SESSION_COOKIE = "msdb_session"
# Over https the cookie takes the __Host- prefix: the browser then keeps it only if it is
# Secure, for this host alone (no Domain) and path /, so no sibling site can plant one.
SECURE_SESSION_COOKIE = f"__Host-{SESSION_COOKIE}"
SESSION_COOKIES = (SECURE_SESSION_COOKIE, SESSION_COOKIE)
OPEN_PATHS = {"/api/health", "/api/current-time", SIGN_IN_PATH, f"{SIGN_IN_PATH}/script.js",
              "/api/session", "/favicon.ico"}
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


def identify(request: Request, access: Access) -> Caller | None:
    """From the bearer token, else the session cookie, else who an anonymous caller is.
    A wrong token is not overridden by a cookie: the client meant the token."""
    token = bearer(request)
    if token is not None:
        return access.identify(token)
    cookie = next((request.cookies[n] for n in SESSION_COOKIES if n in request.cookies), None)
    if cookie and access.needs_credentials:
        found = access.session_caller(cookie)
        if found is not None:
            return found
    return access.anonymous()


async def authenticate(request: Request) -> None:
    access: Access = request.app.state.access
    path = route_path(request)
    caller = identify(request, access)
    request.state.caller = caller
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
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
