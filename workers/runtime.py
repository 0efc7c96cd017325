"""Per-process resources of a worker child, created lazily after the prefork fork."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from celery import current_app

from context.redis_store import RedisHistoryStore
from context.vectors import RedisVectorStore
from core.history import history_store, vector_store
from core.lifecycle import Lifecycle, Limits
from core.metrics import MetricsRecorder
from core.redis_client import connect
from core.settings import Settings, get_settings
from taskqueue.port import CeleryBroker
from workers.llm import LLMClient, Observer, RetryPolicy

if TYPE_CHECKING:
    from workers.llm_genai import GenAIClient
    from workers.llm_generativeai import GenerativeAIClient

SIMULATOR_KEY = "simulator-offline"
LATENCY_METRICS = {"generate": "llm_latency", "embed": "llm_embed_latency"}


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    lifecycle: Lifecycle
    history: RedisHistoryStore
    vectors: RedisVectorStore
    llm: LLMClient
    persona: str
    metrics: MetricsRecorder


_runtime: tuple[int, Runtime] | None = None


def get_runtime() -> Runtime:
    """One Runtime per process: sockets must not be shared across a fork."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), build_runtime(get_settings()))
    return _runtime[1]


@functools.cache
def persona_text(path: Path) -> str:
    """Read once per path; the worker's main process reads it before the pool forks."""
    return path.read_text(encoding="utf-8").strip()


def latency_observer(metrics: MetricsRecorder) -> Observer:
    def observe(operation: str, outcome: str, seconds: float) -> None:
        metrics.observe(LATENCY_METRICS[operation], seconds, outcome)

    return observe


def build_llm(settings: Settings, *, observe: Observer | None = None) -> LLMClient:
    key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else SIMULATOR_KEY
    endpoint = settings.llm_endpoint()
    policy = RetryPolicy(timeout_s=settings.gemini_timeout, retries=settings.gemini_retries,
                         backoff_s=settings.gemini_backoff_s)
    client_class = llm_client_class(settings.gemini_sdk)
    return client_class(api_key=key, model=settings.gemini_model, endpoint=endpoint,
                        policy=policy, embedding_model=settings.gemini_embedding_model,
                        embedding_dim=settings.gemini_embedding_dim, observe=observe)


def llm_client_class(sdk: str) -> type[GenAIClient] | type[GenerativeAIClient]:
    """Imported on demand: a worker loads only the SDK it uses."""
    if sdk == "generativeai":
        from workers.llm_generativeai import GenerativeAIClient

        return GenerativeAIClient
    from workers.llm_genai import GenAIClient

    return GenAIClient


def build_runtime(settings: Settings) -> Runtime:
    client = connect(settings.redis_url, timeout_s=5.0, retries=3)
    metrics = MetricsRecorder(client)
    history = history_store(client)
    lifecycle = Lifecycle(client=client, history=history, limits=Limits.from_settings(settings),
                          broker=CeleryBroker(current_app))
    return Runtime(settings=settings, redis=client, lifecycle=lifecycle, history=history,
                   vectors=vector_store(client), llm=build_llm(settings, observe=latency_observer(metrics)),
                   persona=persona_text(settings.persona_file),
                   metrics=metrics)
