"""Operator endpoints: queue depth, incidents, Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import RedisDep, SettingsDep
from mysisterdb.incidents import IncidentLog
from mysisterdb.monitoring import queue_stats

router = APIRouter(tags=["operations"])


@router.get("/api/queue")
def queue(client: RedisDep, settings: SettingsDep) -> dict[str, Any]:
    """Waiting (all priority sub-lists), reserved-not-started, running, workers, oldest age;
    chat slots busy/free, the recent reply time and what it means for admission (429)."""
    stats = queue_stats(client, max_wait_s=settings.max_queue_wait_s,
                        max_depth=settings.max_queue_depth)
    body = asdict(stats)
    if stats.oldest_waiting_age_s is not None:
        body["oldest_waiting_age_s"] = round(stats.oldest_waiting_age_s, 3)
    return body


@router.get("/api/incidents")
def incidents(client: RedisDep,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    """Time limits hit, workers lost, LLM failures, processes restarted: newest first."""
    return {"incidents": [asdict(i) for i in IncidentLog(client).newest(limit=limit)]}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)
