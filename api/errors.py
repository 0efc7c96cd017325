"""One place that turns errors into HTTP answers: always {"error": {"code", "message"}}.

Validation errors are told in words a user understands: what is wrong with which input
("メッセージ（message）は 8000 文字以内にしてください。"), never a character offset or a bare
location like body.message.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import SignInRequired
from core.errors import MySisterDBError, QueueFull, StoreUnavailable, Unauthorized

logger = logging.getLogger(__name__)

HTTP_MESSAGES = {404: "見つかりませんでした。", 405: "このメソッドは使えません。"}

LABELS = {
    "message": "メッセージ（message）",
    "conversation_id": "会話 ID（conversation_id）",
    "job_id": "ジョブ ID（job_id）",
    "wait": "待ち時間（wait）",
    "after": "after",
    "before": "before",
    "limit": "件数（limit）",
    "Idempotency-Key": "Idempotency-Key ヘッダー",
    "idempotency-key": "Idempotency-Key ヘッダー",
    "Last-Event-ID": "Last-Event-ID ヘッダー",
    "last-event-id": "Last-Event-ID ヘッダー",
}
FORMATS = {
    "before": "ISO 8601 の日時、例 2025-01-01T00:00:00Z、または seq の数",
    "conversation_id": "英数字・-・_ の1〜64文字",
    "job_id": "32桁の16進数（0-9, a-f）",
    "Last-Event-ID": "数字だけ",
    "last-event-id": "数字だけ",
    "Idempotency-Key": "表示可能な ASCII 1〜128 文字",
    "idempotency-key": "表示可能な ASCII 1〜128 文字",
}
KINDS = {"string": "文字列", "int": "整数", "float": "数値", "bool": "true か false",
         "datetime": "日時（ISO 8601、例 2025-01-01T00:00:00Z）"}
BLANK_MESSAGE = "メッセージが空です。何か書いてから送ってください。"


class NoContent(Exception):
    """Answer 204 with no body (e.g. an SSE client that already has the final state)."""


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MySisterDBError)
    headers = None
    if isinstance(exc, QueueFull):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="mysisterdb"'}
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code,
                        headers=headers)


async def on_sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(exc.location, status_code=303)


def describe(error: dict[str, Any]) -> str:
    """One validation error in the user's words."""
    loc = [str(p) for p in error.get("loc", ())]
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    name = loc[1] if len(loc) > 1 else ""
    label = LABELS.get(name, f"「{name}」" if name else "リクエストの本文")
    if kind == "json_invalid":
        return "リクエストの本文が JSON として読めません。"
    if kind in ("model_attributes_type", "dict_type", "model_type"):
        return "リクエストの本文は JSON オブジェクト（{…}）にしてください。"
    if kind == "missing":
        return f"{label}がありません。"
    if kind == "string_too_long":
        return f"{label}は {ctx.get('max_length')} 文字以内にしてください。"
    if kind == "string_too_short":
        return f"{label}が空です。"
    if kind == "string_pattern_mismatch":
        if name == "message":
            return BLANK_MESSAGE
        return f"{label}の形式が正しくありません（{FORMATS.get(name, '使える文字と長さ')}）。"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{label}は {ctx.get('ge', ctx.get('gt'))} 以上にしてください。"
    if kind in ("less_than_equal", "less_than"):
        return f"{label}は {ctx.get('le', ctx.get('lt'))} 以下にしてください。"
    for prefix, words in KINDS.items():
        if kind.startswith(prefix):
            return f"{label}は{words}で指定してください。"
    return f"{label}が正しくありません。"


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    too_long = any(e.get("type") == "string_too_long" and list(e.get("loc", ()))[-1:] ==
                   ["message"] for e in errors)
    message = " ".join(dict.fromkeys(describe(e) for e in errors)) or "入力が正しくありません。"
    return JSONResponse(error_body("message_too_large" if too_long else "invalid_input",
                                   message), status_code=422)


async def on_redis_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    err = StoreUnavailable()
    return JSONResponse(error_body(err.code, err.message), status_code=err.status_code)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    return JSONResponse(error_body(f"http_{exc.status_code}", message),
                        status_code=exc.status_code, headers=exc.headers)


async def on_no_content(request: Request, exc: Exception) -> Response:
    return Response(status_code=204)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SignInRequired, on_sign_in_required)
    app.add_exception_handler(MySisterDBError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(redis.ConnectionError, on_redis_error)
    app.add_exception_handler(redis.TimeoutError, on_redis_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(NoContent, on_no_content)
