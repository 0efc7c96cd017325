from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CeleryDep, RedisDep, SettingsDep
from mysisterdb.models import iso, utcnow

router = APIRouter(prefix="/api", tags=["health"])

WORKER_PING_TIMEOUT_S = 0.5


def redis_ok(client: Any) -> tuple[bool, str]:
    try:
        client.ping()
        return True, "ok"
    except Exception as exc:  # any failure means "not usable"
        return False, f"{type(exc).__name__}: {exc}"


def workers_answering(celery: Any) -> list[str]:
    try:
        replies = celery.control.ping(timeout=WORKER_PING_TIMEOUT_S) or []
    except Exception:
        return []
    return sorted(name for reply in replies for name in reply)


@router.get("/health")
def health(client: RedisDep, celery: CeleryDep, settings: SettingsDep) -> JSONResponse:
    ok_redis, redis_detail = redis_ok(client)
    workers = workers_answering(celery) if ok_redis else []
    healthy = ok_redis and bool(workers)
    body = {
        "status": "ok" if healthy else "unavailable",
        "redis": {"ok": ok_redis, "detail": redis_detail},
        "workers": {"ok": bool(workers), "names": workers},
        "llm": {"mode": settings.llm_mode,
                "note": "replies come from the offline Gemini simulator"
                if settings.uses_simulator else "replies come from Google Gemini"},
        "time": iso(utcnow()),
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/current-time")
def current_time() -> dict[str, Any]:
    return {"time": iso(utcnow())}
