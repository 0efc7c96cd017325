"""Operator endpoints: queue depth, incidents, Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import RedisDep, SettingsDep
from api.schemas import IncidentListOut, IncidentOut, QueueOut, errors
from core.incidents import IncidentLog
from core.monitoring import queue_stats

router = APIRouter(tags=["operations"])


@router.get("/api/queue", response_model=QueueOut, responses=errors())
def queue(client: RedisDep, settings: SettingsDep) -> QueueOut:
    """Waiting (all priority sub-lists), reserved-not-started, running, workers, oldest age;
    chat slots busy/free, the recent reply time and what it means for admission (429)."""
    return QueueOut.of(queue_stats(client, max_wait_s=settings.max_queue_wait_s,
                                   max_depth=settings.max_queue_depth))


@router.get("/api/incidents", response_model=IncidentListOut, responses=errors())
def incidents(client: RedisDep,
              limit: Annotated[int, Query(ge=1, le=1000, description="How many (1-1000)")] = 50,
              ) -> IncidentListOut:
    """Time limits hit, workers lost, LLM failures, processes restarted: newest first."""
    return IncidentListOut(incidents=[IncidentOut.of(i)
                                      for i in IncidentLog(client).newest(limit=limit)])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)
