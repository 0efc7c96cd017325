"""Per-process resources of a worker child, created lazily after the prefork fork."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis

from context.redis_store import RedisHistoryStore
from mysisterdb.jobs import JobStore
from mysisterdb.metrics import MetricsRecorder
from mysisterdb.redis_client import connect
from mysisterdb.settings import Settings, get_settings
from workers.llm import GeminiClient, LLMClient, RetryPolicy

SIMULATOR_KEY = "simulator-offline"


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    history: RedisHistoryStore
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


def build_llm(settings: Settings, metrics: MetricsRecorder) -> LLMClient:
    key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else SIMULATOR_KEY
    endpoint = settings.llm_endpoint()
    policy = RetryPolicy(timeout_s=settings.gemini_timeout, retries=settings.gemini_retries,
                         backoff_s=settings.gemini_backoff_s)
    return GeminiClient(api_key=key, model=settings.gemini_model, endpoint=endpoint,
                        policy=policy,
                        observe=lambda outcome, s: metrics.observe("llm_latency", s, outcome))


def build_runtime(settings: Settings) -> Runtime:
    client = connect(settings.redis_url, timeout_s=5.0, retries=3)
    metrics = MetricsRecorder(client)
    return Runtime(settings=settings, redis=client, jobs=JobStore(client),
                   history=RedisHistoryStore(client), llm=build_llm(settings, metrics),
                   persona=settings.persona_text(), metrics=metrics)
