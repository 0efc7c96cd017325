"""One place that turns errors into HTTP answers: always {"error": {"code", "message"}}."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mysisterdb.errors import MySisterDBError, QueueFull, StoreUnavailable

logger = logging.getLogger(__name__)

HTTP_MESSAGES = {404: "見つかりませんでした。", 405: "このメソッドは使えません。"}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MySisterDBError)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code,
                        headers=headers)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
                       for e in exc.errors())
    return JSONResponse(error_body("invalid_input", f"リクエストの形式が正しくありません（{fields}）。"),
                        status_code=422)


async def on_redis_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    err = StoreUnavailable()
    return JSONResponse(error_body(err.code, err.message), status_code=err.status_code)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    return JSONResponse(error_body(f"http_{exc.status_code}", message),
                        status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MySisterDBError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(redis.ConnectionError, on_redis_error)
    app.add_exception_handler(redis.TimeoutError, on_redis_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
