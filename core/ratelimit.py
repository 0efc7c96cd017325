"""Each person's submissions per time window (MYSISTERDB_RATE_LIMIT, e.g. "30/minute"),
besides the global queue cap: one person cannot fill the queue for everyone.

The `limits` library keeps the counters (a moving window, in Redis, shared by every API
process) on the API's own Redis client, so its calls have the API's timeouts.
"""

from __future__ import annotations

import math
import time

import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from core import keys
from core.errors import RateLimited


class SubmitLimiter:
    def __init__(self, *, client: redis.Redis, rate: str) -> None:
        self.item: RateLimitItem = parse(rate)
        storage = RedisStorage("redis://", connection_pool=client.connection_pool,
                               key_prefix=keys.RATE_LIMIT_PREFIX)
        self._limiter = MovingWindowRateLimiter(storage)

    def hit(self, person: str) -> None:
        """Count one submission of `person`; RateLimited (429, Retry-After) past the rate."""
        if self._limiter.hit(self.item, "submit", person):
            return
        stats = self._limiter.get_window_stats(self.item, "submit", person)
        raise RateLimited(retry_after_s=max(1, math.ceil(stats.reset_time - time.time())))
