"""Admission from real capacity (mysisterdb/capacity.py, mysisterdb/monitoring.py): the 429 cap
and Retry-After derived from the chat slots online and the recent reply time; pure unit tests
and a few against a real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from core import keys
from core.capacity import (
    DEFAULT_REPLY_S,
    Capacity,
    admission,
    mean_reply_s,
    queue_cap,
    record_reply,
    retry_after_s,
)
from core.monitoring import WorkerBeat, read_admission, read_heartbeats, write_heartbeat


def cap(slots: int, reply_s: float, *, max_wait_s: float = 60, max_depth: int = 1000) -> int:
    return queue_cap(Capacity(slots=slots, reply_s=reply_s, samples=10), max_wait_s=max_wait_s,
                     max_depth=max_depth)


def test_the_cap_is_what_the_slots_start_within_the_max_wait() -> None:
    assert cap(32, 3.0) == 640  # 32 slots, a reply every 3 s: 640 start within 60 s
    assert cap(2, 3.0) == 40
    assert cap(2, 6.0) == 20  # slower replies, fewer may wait
    assert cap(4, 3.0, max_wait_s=30) == 40


def test_the_cap_never_passes_the_max_depth_and_is_at_least_one() -> None:
    assert cap(32, 0.05) == 1000
    assert cap(1, 600.0) == 1


def test_without_a_chat_slot_online_the_static_depth_applies() -> None:
    assert cap(0, 3.0, max_depth=7) == 7


def test_retry_after_is_the_time_to_drain_back_under_the_cap() -> None:
    capacity = Capacity(slots=4, reply_s=3.0, samples=10)
    # 41 waiting, cap 40: 2 must leave for a place to open, 4 leave every 3 s: 1.5 s -> 2 s.
    assert retry_after_s(capacity, waiting=41, cap=40, max_wait_s=60) == 2
    assert retry_after_s(capacity, waiting=80, cap=40, max_wait_s=60) == 31  # 41 x 0.75 s
    assert retry_after_s(capacity, waiting=400, cap=40, max_wait_s=60) == 60  # bounded


def test_retry_after_is_one_reply_time_when_nothing_drains() -> None:
    capacity = Capacity(slots=0, reply_s=4.2, samples=3)
    assert retry_after_s(capacity, waiting=5, cap=5, max_wait_s=60) == 5


def test_admission_is_full_at_the_cap() -> None:
    capacity = Capacity(slots=2, reply_s=3.0, samples=5)
    assert not admission(capacity, waiting=39, max_wait_s=60, max_depth=1000).full
    full = admission(capacity, waiting=40, max_wait_s=60, max_depth=1000)
    assert full.full and full.cap == 40 and full.retry_after_s == 2


def test_reply_time_is_the_mean_of_the_recent_ones_or_a_default() -> None:
    assert mean_reply_s([]) == DEFAULT_REPLY_S
    assert mean_reply_s([1.0, 2.0, 6.0]) == 3.0


def beat(hostname: str, *, concurrency: int, queues: list[str]) -> WorkerBeat:
    return WorkerBeat(hostname=hostname, pid=1, concurrency=concurrency, at=time.time(),
                      rss_mb=100.0, children=2, queues=queues, min_concurrency=2, processes=2)


def test_admission_counts_the_slots_of_chat_workers_only(redis_client: redis.Redis) -> None:
    write_heartbeat(redis_client, beat("celery@a", concurrency=8, queues=["chat"]))
    write_heartbeat(redis_client, beat("summary@a", concurrency=1, queues=["summary"]))
    for _ in range(3):
        record_reply(redis_client, 2.0)
    decision = read_admission(redis_client, max_wait_s=60, max_depth=1000)
    assert decision.capacity == Capacity(slots=8, reply_s=2.0, samples=3)
    assert decision.cap == 240 and decision.waiting == 0 and not decision.full


def test_admission_counts_prompts_not_started(redis_client: redis.Redis) -> None:
    write_heartbeat(redis_client, beat("celery@a", concurrency=1, queues=["chat"]))
    record_reply(redis_client, 30.0)
    now = time.time()
    redis_client.zadd(keys.active_jobs(), {"j1": now, "j2": now, "j3": now})
    redis_client.zadd(keys.running_jobs(), {"j1": now})
    decision = read_admission(redis_client, max_wait_s=60, max_depth=1000)
    assert decision.waiting == 2 and decision.cap == 2 and decision.full
    assert decision.retry_after_s == 30  # one of the two must leave: one reply of 30 s


def test_only_the_recent_replies_count(redis_client: redis.Redis) -> None:
    for _ in range(keys.recent_replies_max):
        record_reply(redis_client, 10.0)
    for _ in range(keys.recent_replies_max):
        record_reply(redis_client, 1.0)
    assert redis_client.llen(keys.recent_reply_s()) == keys.recent_replies_max
    assert read_admission(redis_client, max_wait_s=60, max_depth=1000).capacity.reply_s == 1.0


def test_an_expired_heartbeat_leaves_the_index(redis_client: redis.Redis) -> None:
    write_heartbeat(redis_client, beat("celery@gone", concurrency=4, queues=["chat"]))
    write_heartbeat(redis_client, beat("celery@here", concurrency=4, queues=["chat"]))
    redis_client.delete(keys.worker_heartbeat("celery@gone"))  # as if its TTL ran out
    assert [b.hostname for b in read_heartbeats(redis_client)] == ["celery@here"]
    assert redis_client.smembers(keys.workers()) == {b"celery@here"}


def test_a_heartbeat_with_fields_we_do_not_know_is_read(redis_client: redis.Redis) -> None:
    redis_client.set(keys.worker_heartbeat("celery@new"), json.dumps({
        "hostname": "celery@new", "pid": 1, "concurrency": 3, "at": time.time(), "rss_mb": 1,
        "children": 1, "queues": ["chat"], "future": 1}))
    redis_client.sadd(keys.workers(), "celery@new")
    assert [b.concurrency for b in read_heartbeats(redis_client)] == [3]


@pytest.mark.parametrize("waiting", [0, 1])
def test_nothing_online_falls_back_to_the_static_depth(redis_client: redis.Redis,
                                                       waiting: int) -> None:
    if waiting:
        redis_client.zadd(keys.active_jobs(), {"j1": time.time()})
    decision = read_admission(redis_client, max_wait_s=60, max_depth=1)
    assert decision.capacity.slots == 0 and decision.cap == 1
    assert decision.full is bool(waiting)
