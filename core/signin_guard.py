"""Failed sign-ins, throttled: per client address and in all (MYSISTERDB_SIGNIN_FAILURES_*).

A token is checked only while neither limit is used up, so past the limit a right guess
is refused like a wrong one (429 + Retry-After) and guessing gains nothing. The overall
limit stops guessing spread over many addresses; it blocks new sign-ins only: sessions
already made and bearer tokens keep working. Counters live in Redis (the `limits` library,
as the per-person prompt limit), shared by every API process.

A refused sign-in is logged, but at most once a minute per process with how many there
were, so an attack cannot flood the log.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from core import keys
from core.errors import TooManySignIns

logger = logging.getLogger(__name__)

LOG_EVERY_S = 60.0
EVERYONE = "*"


class SignInGuard:
    def __init__(self, *, client: redis.Redis, per_address: str, total: str) -> None:
        storage = RedisStorage("redis://", connection_pool=client.connection_pool,
                               key_prefix=keys.RATE_LIMIT_PREFIX)
        self._limiter = MovingWindowRateLimiter(storage)
        self._limits: list[tuple[RateLimitItem, str | None]] = [
            (parse(per_address), None), (parse(total), EVERYONE)]
        self._log = BoundedLog(every_s=LOG_EVERY_S)

    def _scopes(self, address: str) -> list[tuple[RateLimitItem, str]]:
        return [(item, fixed or address) for item, fixed in self._limits]

    def check(self, address: str) -> None:
        """TooManySignIns (429) while this address, or everyone, is past the limit."""
        waits = [self._limiter.get_window_stats(item, "signin-failed", scope).reset_time
                 for item, scope in self._scopes(address)
                 if not self._limiter.test(item, "signin-failed", scope)]
        if waits:
            self._log.note(f"refused while throttled, latest from {address}")
            raise TooManySignIns(retry_after_s=max(1, math.ceil(max(waits) - time.time())))

    def failed(self, address: str, *, reason: str) -> None:
        for item, scope in self._scopes(address):
            self._limiter.hit(item, "signin-failed", scope)
        self._log.note(f"{reason}, latest from {address}")


class BoundedLog:
    """One warning per `every_s` at most: the first event at once, then a count."""

    def __init__(self, *, every_s: float) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._held = 0

    def note(self, what: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._held += 1
            if now < self._next_at:
                return
            count, self._held, self._next_at = self._held, 0, now + self.every_s
        logger.warning("sign-in refused: %s (%d since the last such line; at most one line "
                       "per %.0f s)", what, count, self.every_s)
