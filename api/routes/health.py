from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.schemas import ErrorBody, HealthOut, TimeOut
from core.access import Caller
from core.llm_check import PENDING, LLMCheck, LLMStatus
from core.models import iso, utcnow
from core.monitoring import QueueStats, queue_stats
from core.settings import Settings

router = APIRouter(prefix="/api", tags=["health"])
T = TypeVar("T")

PUBLIC_HEALTH = ("status", "ok", "time")  # what anyone may know; the rest is the operator's
HEALTH_BUDGET_S = 0.8  # the whole check, whatever is down: health answers within 1 s
FIRST_LLM_CHECK_WAIT_S = 0.5  # only when the LLM check has no recent result (see LLMCheck.status)


def llm_info(settings: Settings, status: LLMStatus, endpoint: str) -> dict[str, Any]:
    if settings.uses_simulator:
        info = {"mode": "simulator", "note": "replies come from the offline Gemini simulator"}
    else:
        info = {"mode": "gemini", "note": "replies come from Google Gemini"}
    return {**info, "ok": status.ok, "endpoint": endpoint, "detail": status.detail,
            "checked_s_ago": status.age_s()}


def overall(healthy: bool, llm: LLMStatus) -> tuple[str, int]:
    """unavailable (503): nothing can run; degraded (200): the stack runs but the LLM
    endpoint does not answer, so chats fail until it does (restarting does not help)."""
    if not healthy:
        return "unavailable", 503
    return ("ok", 200) if llm.ok else ("degraded", 200)


def check(client: Any, settings: Settings) -> tuple[bool, dict[str, Any]]:
    try:
        client.ping()
        stats = queue_stats(client, max_wait_s=settings.max_queue_wait_s,
                            max_depth=settings.max_queue_depth)
    except Exception as exc:  # any Redis failure means "not usable"
        return False, {"redis": {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}}
    consuming = stats.consuming(stall_s=settings.consume_stall_s)
    body = {
        "redis": {"ok": True, "detail": "ok"},
        # Chat is what users wait on: a worker serving only summaries does not make it ok.
        "workers": {"ok": stats.capacity > 0, "online": stats.workers_online,
                    "names": [w["hostname"] for w in stats.workers],
                    "chat_slots": stats.capacity},
        "consuming": {"ok": consuming, "detail": consuming_detail(stats, consuming)},
        "queue": {"waiting": stats.waiting, "reserved": stats.reserved,
                  "running": stats.running, "oldest_waiting_age_s": stats.oldest_waiting_age_s,
                  "slots_busy": stats.slots.busy, "slots_free": stats.slots.free},
    }
    return stats.capacity > 0 and consuming, body


def consuming_detail(stats: QueueStats, consuming: bool) -> str:
    if consuming:
        return "ok"
    return (f"{stats.waiting_by_queue.get('chat', 0)} prompts waiting "
            f"(oldest {stats.oldest_waiting_age_s or 0:.0f} s) while workers have free slots "
            "and start nothing: restart the worker")


# Health's own threads: when Redis hangs, the shared pool fills with handlers waiting on
# it, and a check queued behind them could not answer within its second (1.5 s was seen).
HEALTH_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")


async def in_health_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(HEALTH_THREADS, partial(fn, *args, **kwargs)),
                                  HEALTH_BUDGET_S)


async def stack_check(client: Any, settings: Settings) -> tuple[bool, dict[str, Any]]:
    try:
        return await in_health_thread(check, client, settings)
    except TimeoutError:
        return False, {"redis": {"ok": False, "detail": "no answer within the budget"}}


async def llm_status(llm_check: LLMCheck) -> LLMStatus:
    try:
        return await in_health_thread(llm_check.status, wait_s=FIRST_LLM_CHECK_WAIT_S)
    except TimeoutError:
        return PENDING


@router.get("/health", response_model=HealthOut, responses={
    503: {"model": HealthOut, "description": "Redis, the workers or consumption is not ok (unavailable)"},
    504: {"model": ErrorBody, "description": "The request took longer than "
                                             "MYSISTERDB_REQUEST_TIMEOUT"}})
async def health(request: Request) -> JSONResponse:
    """200 when Redis answers, a worker is alive and prompts get picked up (`degraded`
    when the LLM endpoint does not answer its check); else 503. Without the operator's
    credentials only `status`, `ok` and `time`; the operator (anyone in open mode) also
    sees Redis, the workers, consumption, the queue and the LLM endpoint."""
    settings: Settings = request.app.state.settings
    llm_check: LLMCheck = request.app.state.llm_check
    # Both at once, each in a thread: neither may hold the event loop or the other.
    llm, (healthy, body) = await asyncio.gather(
        llm_status(llm_check), stack_check(request.app.state.health_redis, settings))
    status, code = overall(healthy, llm)
    body.update({"status": status, "ok": code == 200, "time": iso(utcnow()),
                 "llm": llm_info(settings, llm, llm_check.url)})
    out = HealthOut.model_validate(body).model_dump(mode="json")
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None or not caller.operator:
        out = {name: out[name] for name in PUBLIC_HEALTH}
    return JSONResponse(out, status_code=code)


@router.get("/current-time", response_model=TimeOut, responses={
    504: {"model": ErrorBody, "description": "The request took longer than "
                                             "MYSISTERDB_REQUEST_TIMEOUT"}})
def current_time() -> TimeOut:
    return TimeOut(time=iso(utcnow()) or "")
