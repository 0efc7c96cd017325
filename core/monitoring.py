"""What operators see: worker heartbeats, queue depth, and whether workers still consume.

Read by /api/health, /api/queue and /metrics. Workers write their heartbeat from their
main process (workers/signals.py); everything else is read from Redis and the broker's keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis

from core import keys
from core.capacity import Admission, Capacity, admission, mean_reply_s
from core.ports import CHAT_QUEUE, QUEUES
from core.redis_client import to_str


@dataclass(frozen=True)
class WorkerBeat:
    hostname: str
    pid: int
    concurrency: int  # its most pool processes: the autoscale maximum, or the fixed size
    at: float
    rss_mb: float
    children: int
    queues: list[str] = field(default_factory=lambda: list(QUEUES))  # what it consumes
    min_concurrency: int = 0
    processes: int = 0  # pool processes forked now (autoscale moves it)
    busy: int = 0  # tasks running in its pool now

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.at)

    @property
    def serves_chat(self) -> bool:
        return CHAT_QUEUE in self.queues

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerBeat:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}  # a newer worker may send more
        return cls(**{k: v for k, v in data.items() if k in known})


def write_heartbeat(client: redis.Redis, beat: WorkerBeat) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker_heartbeat(beat.hostname), json.dumps(asdict(beat)),
                 ex=keys.worker_heartbeat_ttl_s)
        pipe.sadd(keys.workers(), beat.hostname)
        pipe.execute()


def remove_heartbeat(client: redis.Redis, hostname: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker_heartbeat(hostname))
        pipe.srem(keys.workers(), hostname)
        pipe.execute()


def read_heartbeats(client: redis.Redis, names: list[str] | None = None) -> list[WorkerBeat]:
    """The fresh heartbeats; a hostname whose heartbeat expired leaves the index."""
    if names is None:
        names = [to_str(n) for n in client.smembers(keys.workers())]
    if not names:
        return []
    raws = client.mget([keys.worker_heartbeat(n) for n in names])
    gone = [n for n, r in zip(names, raws, strict=True) if r is None]
    if gone:
        client.srem(keys.workers(), *gone)
    return sorted((WorkerBeat.from_json(r) for r in raws if r), key=lambda b: b.hostname)


def chat_slots(beats: list[WorkerBeat]) -> int:
    return sum(b.concurrency for b in beats if b.serves_chat)


@dataclass
class Slots:
    """Chat slots: total is the online chat workers' maximum, busy the prompts running."""

    total: int
    busy: int
    free: int
    forked: int  # pool processes that exist now (the rest are forked when needed)


@dataclass
class QueueStats:
    waiting: int
    waiting_by_queue: dict[str, int]
    reserved: int  # taken by a worker (the broker's unacked set) but not started
    unacked: int
    running: int
    workers_online: int
    capacity: int
    oldest_waiting_age_s: float | None
    last_job_started_age_s: float | None
    slots: Slots
    not_started: int  # stored prompts not started: in the broker or typed ahead
    recent_reply_s: float
    reply_samples: int
    expected_wait_s: float | None  # for a prompt arriving now (None: no chat slot online)
    admission_cap: int  # 429 from this many prompts not started (mysisterdb/capacity.py)
    retry_after_s: int
    workers: list[dict[str, Any]] = field(default_factory=list)

    def consuming(self, *, stall_s: float) -> bool:
        """False when prompts wait while workers have free slots and start nothing."""
        if self.waiting_by_queue.get(CHAT_QUEUE, 0) == 0 or self.oldest_waiting_age_s is None:
            return True
        if self.running >= self.capacity > 0:
            return True
        started_recently = (self.last_job_started_age_s is not None
                            and self.last_job_started_age_s < stall_s)
        return self.oldest_waiting_age_s < stall_s or started_recently


@dataclass(frozen=True)
class Backlog:
    """What a submit reads to decide on 429: two round trips."""

    not_started: int
    running: int
    beats: list[WorkerBeat]
    replies: list[float]

    def capacity(self) -> Capacity:
        return Capacity(slots=chat_slots(self.beats), reply_s=mean_reply_s(self.replies),
                        samples=len(self.replies))


def read_backlog(client: redis.Redis) -> Backlog:
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.active_jobs())
        pipe.zcard(keys.running_jobs())
        pipe.smembers(keys.workers())
        pipe.lrange(keys.recent_reply_s(), 0, keys.recent_replies_max - 1)
        active, running, names, replies = pipe.execute()
    beats = read_heartbeats(client, [to_str(n) for n in names])
    return Backlog(not_started=max(0, int(active) - int(running)), running=int(running),
                   beats=beats, replies=[float(r) for r in replies])


def read_admission(client: redis.Redis, *, max_wait_s: float, max_depth: int) -> Admission:
    backlog = read_backlog(client)
    return admission(backlog.capacity(), waiting=backlog.not_started, max_wait_s=max_wait_s,
                     max_depth=max_depth)


def waiting_counts(client: redis.Redis) -> dict[str, int]:
    with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            for name in keys.broker_queue_lists(queue):
                pipe.llen(name)
        lengths = pipe.execute()
    per = len(keys.BROKER_PRIORITY_STEPS)
    return {q: int(sum(lengths[i * per:(i + 1) * per])) for i, q in enumerate(QUEUES)}


def oldest_waiting_age_s(client: redis.Redis) -> float | None:
    """Age of the job at the head of the chat queue (kombu LPUSHes, BRPOP takes the right)."""
    oldest: float | None = None
    for name in keys.broker_queue_lists(CHAT_QUEUE):
        raw = client.lindex(name, -1)
        if raw is None:
            continue
        try:
            job_id = json.loads(raw)["headers"]["id"]
        except (ValueError, KeyError, TypeError):
            continue
        job_raw = client.get(keys.job(job_id))
        if job_raw:
            age = time.time() - created_epoch(job_raw)
            oldest = age if oldest is None else max(oldest, age)
    return oldest


def created_epoch(job_raw: bytes | str) -> float:
    from core.models import Job

    return Job.model_validate_json(job_raw).created_at.timestamp()


def running_jobs(client: redis.Redis) -> int:
    return int(client.zcard(keys.running_jobs()))


def last_started_age_s(client: redis.Redis) -> float | None:
    raw = client.get(keys.last_job_started_at())
    return time.time() - float(raw) if raw else None


def queue_stats(client: redis.Redis, *, max_wait_s: float, max_depth: int) -> QueueStats:
    by_queue = waiting_counts(client)
    backlog = read_backlog(client)
    capacity = backlog.capacity()
    decision = admission(capacity, waiting=backlog.not_started, max_wait_s=max_wait_s,
                         max_depth=max_depth)
    unacked, running = int(client.hlen(keys.BROKER_UNACKED)), backlog.running
    busy = min(running, capacity.slots)
    chat_pools = [b for b in backlog.beats if b.serves_chat]
    return QueueStats(
        waiting=sum(by_queue.values()), waiting_by_queue=by_queue,
        # acks_late: a running task stays unacked until it ends.
        reserved=max(0, unacked - running), unacked=unacked, running=running,
        workers_online=len(backlog.beats), capacity=capacity.slots,
        oldest_waiting_age_s=oldest_waiting_age_s(client),
        last_job_started_age_s=last_started_age_s(client),
        slots=Slots(total=capacity.slots, busy=busy, free=capacity.slots - busy,
                    forked=sum(b.processes for b in chat_pools)),
        not_started=backlog.not_started, recent_reply_s=round(capacity.reply_s, 3),
        reply_samples=capacity.samples,
        expected_wait_s=_rounded(capacity.wait_s(backlog.not_started)),
        admission_cap=decision.cap, retry_after_s=decision.retry_after_s,
        workers=[{**asdict(b), "age_s": round(b.age_s, 2)} for b in backlog.beats])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
