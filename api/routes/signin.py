"""Signing in: a person's token, once, for a session cookie the chat page then sends itself.

    GET    /signin            a plain form; a sign-in URL's #token=… is checked by script
                              (preview) and the page ASKS "しぃ と話す人: alice。サインインしますか？"
    POST   /signin            the form: 303 to `next` with the cookie, or the form again (401)
    POST   /api/session       JSON {"token"} -> 204 with the cookie (for a script); the cookie
                              is HttpOnly, SameSite=Strict, Secure on HTTPS
    POST   /api/session/preview  JSON {"token"} -> {person}: whose token, no session made
    GET    /api/session       who the session (or token) is: {person, operator, mode}
    DELETE /api/session       signs this session out on the server (and clears the cookie)
    DELETE /api/sessions      signs the person out everywhere (every session made so far)

A sign-in link never signs in by itself: someone could send a link with their own token,
and the person's later chats would land in that account (login CSRF). The cookie holds no
token (core/sessions.py). A browser can only sign in from the API's own pages: the form's
POST is a state-changing request, refused from another origin. Failed sign-ins and previews
are throttled per address and in all (core/signin_guard.py).
"""

from __future__ import annotations

import html
import logging
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from api.auth import SECURE_SESSION_COOKIE, SESSION_COOKIE, SESSION_COOKIES, caller_of, sessions_of
from api.limits import SIGN_IN_FORM_BYTES
from api.schemas import SessionOut, SessionPreviewOut, SignInRequest, errors
from core.access import SIGN_IN_PATH, Access, Caller
from core.errors import InvalidInput, TooManySignIns, Unauthorized
from core.signin_guard import SignInGuard

logger = logging.getLogger(__name__)

router = APIRouter(tags=["session"])

SCRIPT = Path(__file__).resolve().parent.parent / "static" / "signin.js"
PAGE = """<!doctype html>
<html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>サインイン · MySisterDB</title>
<style>
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; padding: 1rem;
  box-sizing: border-box; background: #fffaf6; color: #1f1a17;
  font: 16px/1.6 system-ui, "Hiragino Sans", "Noto Sans JP", sans-serif; }}
main {{ width: min(26rem, 100%); background: #fff; border: 1px solid #e6d9cf;
  border-radius: 12px; padding: 1.5rem; box-sizing: border-box; }}
h1 {{ margin: 0 0 .5rem; font-size: 1.4rem; }}
label {{ display: block; font-weight: 600; }}
input[name=token] {{ display: block; width: 100%; box-sizing: border-box; margin: .4rem 0 1rem;
  padding: .6rem .75rem; font: inherit; border: 1px solid #5c534d; border-radius: 8px; }}
button {{ width: 100%; padding: .7rem; font: inherit; font-weight: 700; color: #fff;
  background: #a8275f; border: 0; border-radius: 8px; cursor: pointer; }}
:focus-visible {{ outline: 3px solid #0b57d0; outline-offset: 2px; }}
[hidden] {{ display: none !important; }}
#who {{ font-size: 1.15rem; font-weight: 700; }}
#decline {{ display: block; margin-top: .8rem; text-align: center; color: #5c534d; }}
p:last-child {{ color: #5c534d; font-size: .9rem; margin-bottom: 0; }}
</style>
<script src="{script}" defer></script></head>
<body>
<main>
<h1>サインイン</h1>
<p id="notice" role="status">{notice}</p>
<form id="signin" method="post" action="/signin">
<label id="token-label">アクセストークン <input name="token" type="password"
 autocomplete="current-password" required autofocus></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">サインイン</button>
<a id="decline" href="{signin}" hidden>サインインしない</a>
</form>
<p>トークンは管理者から受け取ってください（<code>mysisterdb token</code> で表示できます）。</p>
</main>
</body></html>
"""
NOTICE = "この MySisterDB を使うにはサインインが必要です。"
WRONG = "トークンが違います。もう一度入力してください。"
THROTTLED = "サインインの失敗が続いたため、しばらく受け付けません。{seconds} 秒ほど待ってください。"


def local_path(candidate: str | None) -> str:
    """Where to go after signing in: a path of this site only (never //host or a URL)."""
    if candidate and candidate.startswith("/") and not candidate.startswith(("//", "/\\")):
        return candidate
    return "/"


def form_page(next_path: str, *, notice: str = NOTICE, status: int = 200,
              headers: dict[str, str] | None = None) -> HTMLResponse:
    page = PAGE.format(script=f"{SIGN_IN_PATH}/script.js", notice=html.escape(notice),
                       signin=SIGN_IN_PATH,
                       next=html.escape(local_path(next_path)))
    return HTMLResponse(page, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


@router.get(SIGN_IN_PATH, include_in_schema=False)
def sign_in_page(request: Request) -> HTMLResponse:
    return form_page(request.query_params.get("next", "/"))


@lru_cache(maxsize=1)
def script() -> str:
    return SCRIPT.read_text(encoding="utf-8")


@router.get(f"{SIGN_IN_PATH}/script.js", include_in_schema=False)
def sign_in_script() -> Response:
    return Response(script(), media_type="text/javascript; charset=utf-8",
                     headers={"Cache-Control": "no-cache"})


def set_session(request: Request, response: Response, access: Access, person: str) -> None:
    # https as uvicorn sees it: the socket's, or X-Forwarded-Proto from a trusted proxy
    # (MYSISTERDB_FORWARDED_ALLOW_IPS).
    https = request.url.scheme == "https"
    response.set_cookie(SECURE_SESSION_COOKIE if https else SESSION_COOKIE,
                        sessions_of(request).new(person), max_age=int(access.session_s),
                        path="/", httponly=True, samesite="strict", secure=https)


def clear_session(response: Response) -> None:
    for name in SESSION_COOKIES:
        response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                               secure=name == SECURE_SESSION_COOKIE)


async def read_form(request: Request) -> tuple[str, str]:
    """(token, next) from the sign-in form."""
    body = await request.body()
    if len(body) > SIGN_IN_FORM_BYTES:  # the middleware cut it already: a second guard
        raise InvalidInput("リクエストが大きすぎます。")
    fields = parse_qs(body.decode("utf-8", errors="replace"))
    return fields.get("token", [""])[0].strip(), local_path(fields.get("next", ["/"])[0])


def address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def person_of(request: Request, token: str) -> str | None:
    """Whose token it is, counted against the failed sign-in limits: TooManySignIns while
    they are used up, before the token is even looked at (a right guess gains nothing)."""
    access: Access = request.app.state.access
    guard: SignInGuard = request.app.state.signin_guard
    guard.check(address(request))
    caller = access.identify(token) if token else None
    if caller is None or caller.person is None:
        guard.failed(address(request), reason="no such token" if caller is None
                     else "an operator token has no conversations")
        return None
    return caller.person


@router.post(SIGN_IN_PATH, include_in_schema=False)
async def sign_in_form(request: Request) -> Response:
    """The form's POST: on to `next` with the cookie, or the form again with a notice."""
    access: Access = request.app.state.access
    token, next_path = await read_form(request)
    try:
        person = await run_in_threadpool(person_of, request, token)
    except TooManySignIns as exc:
        return form_page(next_path, notice=THROTTLED.format(seconds=exc.retry_after_s),
                         status=429, headers={"Retry-After": str(exc.retry_after_s)})
    if person is None:
        return form_page(next_path, notice=WRONG, status=401)
    logger.info("%s signed in", person)
    response = RedirectResponse(next_path, status_code=303)
    if access.needs_credentials:
        set_session(request, response, access, person)
    return response


@router.post("/api/session", status_code=204, response_class=Response,
             responses=errors(401, 429))
def sign_in(body: SignInRequest, request: Request) -> Response:
    """Sign in with a person's token: sets the session cookie (HttpOnly, SameSite=Strict,
    Secure on HTTPS) that the chat page's requests then carry. Failed sign-ins are limited
    per address and in all (429 `too_many_sign_ins` + Retry-After)."""
    access: Access = request.app.state.access
    person = person_of(request, body.token.strip())
    if person is None:
        raise Unauthorized("トークンが違います。")
    logger.info("%s signed in", person)
    response = Response(status_code=204)
    if access.needs_credentials:
        set_session(request, response, access, person)
    return response


@router.post("/api/session/preview", response_model=SessionPreviewOut,
             responses=errors(401, 429))
def preview(body: SignInRequest, request: Request) -> SessionPreviewOut:
    """Whose token this is, without signing in (no cookie, no session): the sign-in page
    asks the person before a sign-in link signs them in. Limited like a sign-in."""
    person = person_of(request, body.token.strip())
    if person is None:
        raise Unauthorized("トークンが違います。")
    return SessionPreviewOut(person=person)


@router.get("/api/session", response_model=SessionOut, responses=errors())
def who(request: Request) -> SessionOut:
    """Who the request is signed in as (401 when nobody): the page shows the name."""
    access: Access = request.app.state.access
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        raise Unauthorized()
    return SessionOut(person=caller.person, operator=caller.operator, mode=access.mode.value)


@router.delete("/api/session", status_code=204, response_class=Response, responses=errors())
def sign_out(request: Request) -> Response:
    """Sign out: this session ends on the server, on every API process, at once (the cookie
    is cleared too; a bearer token is unaffected)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and sessions_of(request).end(cookie):
        logger.info("a session was signed out")
    response = Response(status_code=204)
    clear_session(response)
    return response


@router.delete("/api/sessions", status_code=204, response_class=Response, responses=errors())
def sign_out_everywhere(request: Request) -> Response:
    """Sign the person out everywhere: every session of theirs made until now ends (other
    browsers, a lost phone). Needs the person's session or token; bearer tokens keep
    working (change the token to end those)."""
    person = caller_of(request).person or ""
    sessions_of(request).end_all(person)
    logger.info("%s signed out everywhere", person)
    response = Response(status_code=204)
    clear_session(response)
    return response
