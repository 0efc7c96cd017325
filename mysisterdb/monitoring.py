"""What operators see: worker heartbeats, queue depth, and whether workers still consume.

Read by /api/health, /api/queue and /metrics. Workers write their heartbeat from their
main process (workers/signals.py); everything else is read from Redis and the broker's keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from mysisterdb import keys

CHAT_QUEUE = "chat"
QUEUES = ("chat", "summary")


@dataclass(frozen=True)
class WorkerBeat:
    hostname: str
    pid: int
    concurrency: int
    at: float
    rss_mb: float
    children: int

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.at)


def write_heartbeat(client: redis.Redis, beat: WorkerBeat) -> None:
    client.set(keys.worker_heartbeat(beat.hostname), json.dumps(asdict(beat)),
               ex=keys.worker_heartbeat_ttl_s)


def read_heartbeats(client: redis.Redis) -> list[WorkerBeat]:
    names = list(client.scan_iter(match=keys.worker_heartbeat_pattern(), count=100))
    raws = client.mget(names) if names else []
    return sorted((WorkerBeat(**json.loads(r)) for r in raws if r), key=lambda b: b.hostname)


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
    from mysisterdb.models import Job

    return Job.model_validate_json(job_raw).created_at.timestamp()


def running_jobs(client: redis.Redis) -> int:
    return int(client.zcard(keys.running_jobs()))


def last_started_age_s(client: redis.Redis) -> float | None:
    raw = client.get(keys.last_job_started_at())
    return time.time() - float(raw) if raw else None


def queue_stats(client: redis.Redis) -> QueueStats:
    by_queue = waiting_counts(client)
    beats = read_heartbeats(client)
    unacked, running = int(client.hlen(keys.BROKER_UNACKED)), running_jobs(client)
    return QueueStats(
        waiting=sum(by_queue.values()), waiting_by_queue=by_queue,
        # acks_late: a running task stays unacked until it ends.
        reserved=max(0, unacked - running), unacked=unacked, running=running,
        workers_online=len(beats), capacity=sum(b.concurrency for b in beats),
        oldest_waiting_age_s=oldest_waiting_age_s(client),
        last_job_started_age_s=last_started_age_s(client),
        workers=[{**asdict(b), "age_s": round(b.age_s, 2)} for b in beats])
