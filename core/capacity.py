"""What the chat workers can take, from what they report: the numbers behind a 429.

    slots     the chat slots of the online workers: each one's autoscale maximum (its pool
              grows to it as soon as prompts wait), from their heartbeats
    reply_s   the mean time the last `keys.recent_replies_max` prompts held their slot (claim
              to end), written by the worker that ran each one
    waiting   prompts stored and not started: in the broker, or typed ahead in a conversation

Prompts leave the backlog at slots / reply_s per second, so a prompt arriving now waits about
waiting × reply_s / slots. The API takes a prompt while that stays within
MYSISTERDB_MAX_QUEUE_WAIT_S (the cap below), never beyond MYSISTERDB_MAX_QUEUE_DEPTH; past it,
429 with Retry-After = the time for the backlog to drain back under the cap.

With no chat worker online there are no slots to count: the static MYSISTERDB_MAX_QUEUE_DEPTH
applies (health says 503 meanwhile; prompts not started within the queue timeout expire).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from core import keys

DEFAULT_REPLY_S = 5.0  # until a prompt has been measured: a typical Gemini reply


@dataclass(frozen=True)
class Capacity:
    slots: int
    reply_s: float
    samples: int  # how many recent prompts reply_s rests on (0: DEFAULT_REPLY_S)

    @property
    def drain_per_s(self) -> float:
        return self.slots / self.reply_s if self.slots > 0 else 0.0

    def wait_s(self, waiting: int) -> float | None:
        """Expected wait of a prompt arriving behind `waiting` others; None without slots."""
        return waiting * self.reply_s / self.slots if self.slots > 0 else None


@dataclass(frozen=True)
class Admission:
    waiting: int
    cap: int
    retry_after_s: int
    capacity: Capacity

    @property
    def full(self) -> bool:
        return self.waiting >= self.cap


def queue_cap(capacity: Capacity, *, max_wait_s: float, max_depth: int) -> int:
    """How many prompts may wait: what the slots start within max_wait_s (at least one),
    never more than max_depth; max_depth alone when no slot is online."""
    if capacity.slots <= 0:
        return max_depth
    return max(1, min(max_depth, math.floor(max_wait_s * capacity.drain_per_s)))


def retry_after_s(capacity: Capacity, *, waiting: int, cap: int, max_wait_s: float) -> int:
    """Seconds until the backlog is back under the cap (one reply time when no slot is
    online, as nothing drains then), within 1 .. max_wait_s."""
    excess = max(1, waiting - cap + 1)
    seconds = excess / capacity.drain_per_s if capacity.slots > 0 else capacity.reply_s
    return int(min(max(1.0, math.ceil(seconds)), max(1.0, math.ceil(max_wait_s))))


def admission(capacity: Capacity, *, waiting: int, max_wait_s: float,
              max_depth: int) -> Admission:
    cap = queue_cap(capacity, max_wait_s=max_wait_s, max_depth=max_depth)
    return Admission(waiting=waiting, cap=cap, capacity=capacity,
                     retry_after_s=retry_after_s(capacity, waiting=waiting, cap=cap,
                                                 max_wait_s=max_wait_s))


def mean_reply_s(samples: list[float]) -> float:
    return sum(samples) / len(samples) if samples else DEFAULT_REPLY_S


def recent_replies(client: redis.Redis) -> list[float]:
    raws = client.lrange(keys.recent_reply_s(), 0, keys.recent_replies_max - 1)
    return [float(r) for r in raws]


def record_reply(client: redis.Redis, seconds: float) -> None:
    """One prompt held its slot this long (the worker that ran it calls this)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.lpush(keys.recent_reply_s(), f"{seconds:.3f}")
        pipe.ltrim(keys.recent_reply_s(), 0, keys.recent_replies_max - 1)
        pipe.execute()
