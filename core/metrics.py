"""Metrics that survive process boundaries: workers add to counters and histograms kept in
Redis; the API's collector turns them, plus live queue and worker figures, into Prometheus
text with the `prometheus-client` library.

Names follow celery-exporter where one exists (celery_queue_length, celery_task_runtime,
celery_worker_up), the rest are mysisterdb_*.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.client import Pipeline

from core import keys
from core.monitoring import QueueStats, queue_stats
from core.redis_client import to_str

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
HISTOGRAMS = {
    # name in Redis: (prometheus name, help, label name or "")
    "celery_task_runtime": ("celery_task_runtime", "Run time of chat tasks (s).", "name"),
    "job_duration": ("mysisterdb_job_duration_seconds", "Submit to final state (s).", ""),
    "llm_latency": ("mysisterdb_llm_latency_seconds", "One Gemini request, start to end (s).",
                    "outcome"),
    "llm_embed_latency": ("mysisterdb_llm_embed_latency_seconds",
                          "One Gemini embedding request, start to end (s).", "outcome"),
    "step_duration": ("mysisterdb_step_duration_seconds", "Duration of a job step (s).", "step"),
}
COUNTERS = {
    "jobs": ("mysisterdb_jobs", "Jobs by final status and error code.", ("status", "error_code")),
    "time_limits": ("mysisterdb_time_limits_hit", "Task time limits hit.", ("kind",)),
    "semantic_recall": ("mysisterdb_semantic_recall", "Prompts built with embeddings on, by "
                        "outcome (used, no_vectors, lexical_only).", ("outcome",)),
    "embedding_tasks": ("mysisterdb_embedding_tasks", "Background embedding task runs, by "
                        "outcome.", ("outcome",)),
}


def counter_field(name: str, labels: tuple[str, ...]) -> str:
    return "|".join((name, *labels))


def bucket_field(seconds: float) -> str:
    bound = next((b for b in DURATION_BUCKETS if seconds <= b), None)
    return f"in:{bound}" if bound is not None else "in:+Inf"


def cumulative_buckets(data: dict[str, float]) -> list[tuple[str, float]]:
    """Prometheus buckets from the stored ones: `in:` counts added up, plus any cumulative
    `le:` counts written before (by an older version)."""
    buckets, running = [], 0.0
    for bound in DURATION_BUCKETS:
        running += data.get(f"in:{bound}", 0.0)
        buckets.append((str(bound), running + data.get(f"le:{bound}", 0.0)))
    buckets.append(("+Inf", data.get("count", 0.0)))
    return buckets


class MetricsRecorder:
    """Cheap writes from any process. With `pipe`, the writes join the caller's transaction
    (so a job's final status and its counters appear together); alone, they are best effort."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def count(self, name: str, *labels: str, pipe: Pipeline | None = None) -> None:
        self._write(lambda p: p.hincrby(keys.metrics_counters(), counter_field(name, labels), 1),
                    name, pipe)

    def observe(self, name: str, seconds: float, label: str = "", *,
                pipe: Pipeline | None = None) -> None:
        """Three commands per sample: its one bucket (`in:` the smallest bound it fits, not
        cumulative), count and sum; the collector adds the buckets up. A prompt records
        several samples, so writing every cumulative bucket cost it ~40 Redis commands."""
        key = keys.metrics_histogram(f"{name}|{label}")

        def write(p: Pipeline) -> None:
            p.hincrby(key, bucket_field(seconds), 1)
            p.hincrby(key, "count", 1)
            p.hincrbyfloat(key, "sum", seconds)

        self._write(write, name, pipe)

    def _write(self, write: Callable[[Pipeline], object], name: str,
               pipe: Pipeline | None) -> None:
        if pipe is not None:
            write(pipe)
            return
        try:
            with self._redis.pipeline(transaction=False) as own:
                write(own)
                own.execute()
        except redis.RedisError as exc:  # a lost sample must never fail a job
            logger.warning("metric %s not recorded: %s", name, exc)


class RedisCollector(Collector):
    """Collects on scrape: nothing is cached in the API process."""

    def __init__(self, client: redis.Redis, *, max_wait_s: float, max_depth: int) -> None:
        self._redis = client
        self._max_wait_s = max_wait_s
        self._max_depth = max_depth

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._counters()
            yield from self._histograms()
            yield from self._live()
        except redis.RedisError as exc:
            logger.warning("metrics unavailable: %s", exc)

    def _counters(self) -> Iterator[Metric]:
        raw = {to_str(k): int(v) for k, v in self._redis.hgetall(keys.metrics_counters()).items()}
        for name, (prom, doc, label_names) in COUNTERS.items():
            family = CounterMetricFamily(prom, doc, labels=list(label_names))
            for field, value in raw.items():
                parts = field.split("|")
                if parts[0] == name and len(parts) == len(label_names) + 1:
                    family.add_metric(parts[1:], value)
            yield family

    def _histograms(self) -> Iterator[Metric]:
        for name, (prom, doc, label) in HISTOGRAMS.items():
            family = HistogramMetricFamily(prom, doc, labels=[label] if label else None)
            for key in self._redis.scan_iter(match=keys.metrics_histogram(f"{name}|*")):
                label_value = to_str(key).split("|", 1)[1]
                data = {to_str(k): float(v) for k, v in self._redis.hgetall(key).items()}
                family.add_metric([label_value] if label else [], cumulative_buckets(data),
                                  sum_value=data.get("sum", 0.0))
            yield family

    def _live(self) -> Iterator[Metric]:
        stats = queue_stats(self._redis, max_wait_s=self._max_wait_s, max_depth=self._max_depth)
        length = GaugeMetricFamily("celery_queue_length", "Messages waiting in a queue.",
                                   labels=["queue_name"])
        for queue, n in stats.waiting_by_queue.items():
            length.add_metric([queue], n)
        yield length
        yield GaugeMetricFamily("mysisterdb_queue_reserved", "Taken by a worker, not started.",
                                value=stats.reserved)
        yield GaugeMetricFamily("mysisterdb_jobs_running", "Jobs in progress.",
                                value=stats.running)
        yield GaugeMetricFamily("mysisterdb_workers_online", "Workers with a fresh heartbeat.",
                                value=stats.workers_online)
        yield from self._capacity(stats)
        up = GaugeMetricFamily("celery_worker_up", "A worker's heartbeat is fresh.",
                               labels=["hostname"])
        memory = GaugeMetricFamily("mysisterdb_worker_memory_bytes",
                                   "RSS of a worker with its pool processes.", labels=["hostname"])
        for w in stats.workers:
            up.add_metric([w["hostname"]], 1)
            memory.add_metric([w["hostname"]], w["rss_mb"] * 1024 * 1024)
        yield up
        yield memory

    @staticmethod
    def _capacity(stats: QueueStats) -> Iterator[Metric]:
        slots = GaugeMetricFamily("mysisterdb_chat_slots",
                                  "Chat slots of the online workers, by state.", labels=["state"])
        slots.add_metric(["busy"], stats.slots.busy)
        slots.add_metric(["free"], stats.slots.free)
        yield slots
        yield GaugeMetricFamily("mysisterdb_chat_processes",
                                "Chat pool processes forked now (autoscale).",
                                value=stats.slots.forked)
        yield GaugeMetricFamily("mysisterdb_queue_oldest_wait_seconds",
                                "Age of the oldest prompt waiting in the chat queue.",
                                value=stats.oldest_waiting_age_s or 0.0)
        yield GaugeMetricFamily("mysisterdb_queue_not_started",
                                "Stored prompts not started (in the broker or typed ahead).",
                                value=stats.not_started)
        yield GaugeMetricFamily("mysisterdb_queue_admission_cap",
                                "Prompts not started at which submits get 429.",
                                value=stats.admission_cap)
        yield GaugeMetricFamily("mysisterdb_reply_seconds_recent",
                                "Mean time recent prompts held a slot (s).",
                                value=stats.recent_reply_s)
