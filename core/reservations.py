"""What we read (and the one thing we undo) in kombu's Redis transport keys.

kombu keeps a message a worker reserved in the `unacked` hash (delivery tag -> JSON
[message, exchange, routing key]) with its reservation time in `unacked_index`, and puts it
back in its queue only after the visibility timeout (above the hard limit, so minutes). A
worker that loses its connection to Redis (Redis restarted, a network cut) drops what it
had reserved but not started: without help those prompts would wait out the visibility
timeout. The lifecycle's sweep sends a fresh message for such a prompt instead (the claim
makes a duplicate harmless) and forgets the stale reservation. It also needs to know
whether a prompt's message is anywhere at all: waiting in the queue, or reserved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from core import keys
from core.ports import CHAT_QUEUE, CHAT_TASK
from core.redis_client import to_str


@dataclass(frozen=True)
class Reservation:
    tag: str
    job_id: str


def stale_chat_reservations(client: redis.Redis, *, reserved_before_epoch: float,
                            limit: int) -> list[Reservation]:
    """Chat prompts reserved by a worker before the given time and still unacknowledged."""
    tags = [to_str(t) for t in client.zrangebyscore(
        keys.BROKER_UNACKED_INDEX, "-inf", reserved_before_epoch, start=0, num=limit)]
    if not tags:
        return []
    found: list[Reservation] = []
    for tag, raw in zip(tags, client.hmget(keys.BROKER_UNACKED, tags), strict=True):
        job_id = chat_job_id(raw)
        if job_id is not None:
            found.append(Reservation(tag=tag, job_id=job_id))
    return found


def chat_reservations(client: redis.Redis) -> list[Reservation]:
    """Every chat prompt a worker holds (running ones included, with acks_late)."""
    found: list[Reservation] = []
    for tag, raw in client.hgetall(keys.BROKER_UNACKED).items():
        job_id = chat_job_id(raw)
        if job_id is not None:
            found.append(Reservation(tag=to_str(tag), job_id=job_id))
    return found


def chat_waiting(client: redis.Redis) -> int:
    """Messages waiting in the chat queue (all its priority lists)."""
    with client.pipeline(transaction=False) as pipe:
        for name in keys.broker_queue_lists(CHAT_QUEUE):
            pipe.llen(name)
        return sum(int(n) for n in pipe.execute())


def chat_job_id(raw: bytes | str | None) -> str | None:
    """The job id of an unacked chat message (Celery protocol 2: the task id), or None."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)[0]
        headers = message["headers"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return str(headers["id"]) if headers.get("task") == CHAT_TASK else None


def forget_reservation(client: redis.Redis, tag: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.BROKER_UNACKED, tag)
        pipe.zrem(keys.BROKER_UNACKED_INDEX, tag)
        pipe.execute()
