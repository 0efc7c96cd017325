"""Signing in: a person's token, once, for a session cookie the chat page then sends itself.

    GET    /signin            a plain form (and a sign-in URL's #token=… filled in by script)
    POST   /signin            the form: 303 to `next` with the cookie, or the form again (401)
    POST   /api/session       JSON {"token"} -> 204 with the cookie (for a script); the cookie
                              is HttpOnly, SameSite=Strict, Secure on HTTPS
    GET    /api/session       who the session (or token) is: {person, operator, mode}
    DELETE /api/session       signs out (the cookie is cleared)

The cookie holds no token (see core.access). A browser can only sign in from the API's
own pages: the form's POST is a state-changing request, refused from another origin.
"""

from __future__ import annotations

import html
import logging
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from api.auth import SECURE_SESSION_COOKIE, SESSION_COOKIE, SESSION_COOKIES
from api.limits import SIGN_IN_FORM_BYTES
from api.schemas import SessionOut, SignInRequest, errors
from core.access import SIGN_IN_PATH, Access, Caller
from core.errors import InvalidInput, Unauthorized

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
p:last-child {{ color: #5c534d; font-size: .9rem; margin-bottom: 0; }}
</style>
<script src="{script}" defer></script></head>
<body>
<main>
<h1>サインイン</h1>
<p>{notice}</p>
<form id="signin" method="post" action="/signin">
<label>アクセストークン <input name="token" type="password" autocomplete="current-password"
 required autofocus></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">サインイン</button>
</form>
<p>トークンは管理者から受け取ってください（<code>mysisterdb token</code> で表示できます）。</p>
</main>
</body></html>
"""
NOTICE = "この MySisterDB を使うにはサインインが必要です。"
WRONG = "トークンが違います。もう一度入力してください。"


def local_path(candidate: str | None) -> str:
    """Where to go after signing in: a path of this site only (never //host or a URL)."""
    if candidate and candidate.startswith("/") and not candidate.startswith(("//", "/\\")):
        return candidate
    return "/"


def form_page(next_path: str, *, notice: str = NOTICE, status: int = 200) -> HTMLResponse:
    page = PAGE.format(script=f"{SIGN_IN_PATH}/script.js", notice=html.escape(notice),
                       next=html.escape(local_path(next_path)))
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


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
                        access.new_session(person), max_age=int(access.session_s), path="/",
                        httponly=True, samesite="strict", secure=https)


async def read_form(request: Request) -> tuple[str, str]:
    """(token, next) from the sign-in form."""
    body = await request.body()
    if len(body) > SIGN_IN_FORM_BYTES:  # the middleware cut it already: a second guard
        raise InvalidInput("リクエストが大きすぎます。")
    fields = parse_qs(body.decode("utf-8", errors="replace"))
    return fields.get("token", [""])[0].strip(), local_path(fields.get("next", ["/"])[0])


def person_of(access: Access, token: str) -> str | None:
    caller = access.identify(token) if token else None
    if caller is None or caller.person is None:
        logger.warning("sign-in refused: %s", "no such token" if caller is None
                       else "an operator token has no conversations")
        return None
    logger.info("%s signed in", caller.person)
    return caller.person


@router.post(SIGN_IN_PATH, include_in_schema=False)
async def sign_in_form(request: Request) -> Response:
    """The form's POST: on to `next` with the cookie, or the form again with a notice."""
    access: Access = request.app.state.access
    token, next_path = await read_form(request)
    person = person_of(access, token)
    if person is None:
        return form_page(next_path, notice=WRONG, status=401)
    response = RedirectResponse(next_path, status_code=303)
    if access.needs_credentials:
        set_session(request, response, access, person)
    return response


@router.post("/api/session", status_code=204, response_class=Response, responses=errors(401))
def sign_in(body: SignInRequest, request: Request) -> Response:
    """Sign in with a person's token: sets the session cookie (HttpOnly, SameSite=Strict,
    Secure on HTTPS) that the chat page's requests then carry."""
    access: Access = request.app.state.access
    person = person_of(access, body.token.strip())
    if person is None:
        raise Unauthorized("トークンが違います。")
    response = Response(status_code=204)
    if access.needs_credentials:
        set_session(request, response, access, person)
    return response


@router.get("/api/session", response_model=SessionOut, responses=errors())
def who(request: Request) -> SessionOut:
    """Who the request is signed in as (401 when nobody): the page shows the name."""
    access: Access = request.app.state.access
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        raise Unauthorized()
    return SessionOut(person=caller.person, operator=caller.operator, mode=access.mode.value)


@router.delete("/api/session", status_code=204, response_class=Response, responses=errors())
def sign_out() -> Response:
    """Sign out: the session cookie is cleared (a bearer token is unaffected)."""
    response = Response(status_code=204)
    for name in SESSION_COOKIES:
        response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                               secure=name == SECURE_SESSION_COOKIE)
    return response
