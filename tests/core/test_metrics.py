"""Histogram samples cost one bucket each; the collector adds them up (real Redis)."""

from __future__ import annotations

import redis

from core import keys
from core.metrics import MetricsRecorder, RedisCollector


def histogram(client: redis.Redis, name: str) -> dict[str, float]:
    """The exposed `{name}_bucket` samples by their `le` label."""
    collector = RedisCollector(client, max_wait_s=60, max_depth=10)
    return {sample.labels["le"]: sample.value for family in collector.collect()
            for sample in family.samples if sample.name == f"{name}_bucket"}


def test_a_sample_writes_one_bucket_and_the_collector_cumulates(
        redis_client: redis.Redis) -> None:
    recorder = MetricsRecorder(redis_client)
    for seconds in (0.05, 0.3, 0.3, 7.0, 500.0):
        recorder.observe("job_duration", seconds)
    stored = {k.decode() for k in redis_client.hkeys(keys.metrics_histogram("job_duration|"))}
    assert stored == {"in:0.1", "in:0.5", "in:10.0", "in:+Inf", "count", "sum"}
    buckets = histogram(redis_client, "mysisterdb_job_duration_seconds")
    assert buckets["0.1"] == 1 and buckets["0.25"] == 1 and buckets["0.5"] == 3
    assert buckets["5.0"] == 3 and buckets["10.0"] == 4 and buckets["120.0"] == 4
    assert buckets["+Inf"] == 5


def test_cumulative_buckets_of_an_older_version_still_count(redis_client: redis.Redis) -> None:
    key = keys.metrics_histogram("job_duration|")
    redis_client.hset(key, mapping={"le:0.1": 2, "le:0.25": 2, "le:0.5": 2, "count": 2,
                                    "sum": 0.1})
    MetricsRecorder(redis_client).observe("job_duration", 0.2)
    buckets = histogram(redis_client, "mysisterdb_job_duration_seconds")
    assert buckets["0.1"] == 2 and buckets["0.25"] == 3 and buckets["+Inf"] == 3
