"""Redis clients with explicit timeouts: no call to Redis may hang a request or a task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from core import redis_sentinel

DEFAULT_URL = "redis://127.0.0.1:6379/0"
T = TypeVar("T")


def connect(url: str | None, *, timeout_s: float, retries: int = 0) -> redis.Redis:
    """A client whose every command ends within about timeout_s * (retries + 1).

    The API uses retries=0 so that a hung Redis gives a 503 in under 2 s; workers allow a
    few retries with backoff to ride out a Redis restart. Even with retries=0 a command on
    a connection that broke while idle (Redis restarted) is sent once more on a fresh one:
    a broken connection fails at once, and only a timeout may not be repeated.
    """
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries) if retries else Retry(
        NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    if redis_sentinel.is_sentinel(url):
        # The fresh connection of a retry asks the Sentinels again: after a failover it
        # reaches the new primary.
        return redis_sentinel.client(url or "", timeout_s=timeout_s, retry=retry)
    return redis.Redis.from_url(
        url or DEFAULT_URL,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=retry,
        health_check_interval=10,
    )


COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def delete_if_value(client: redis.Redis, key: str, value: str) -> bool:
    """Delete a key only while it still holds our value (a lock or claim we own)."""
    return bool(client.eval(COMPARE_AND_DELETE, 1, key, value))


MAX_TRANSACTION_ATTEMPTS = 20


class TransactionFailed(redis.ConnectionError):
    """A WATCH transaction could not be completed (contention, or the connection failed)."""


def lost_connection(exc: redis.WatchError) -> bool:
    """redis-py reports a connection failure while watching as a WatchError too; unlike a
    real conflict, the EXEC may then have been applied already."""
    return isinstance(exc.__context__, (redis.ConnectionError, redis.TimeoutError))


def to_str(raw: Any) -> str:
    """A Redis reply as str (clients here do not decode responses)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def run_transaction(client: redis.Redis, attempt: Callable[[Pipeline], T], *,
                    recover: Callable[[], T | None] | None = None, what: str) -> T:
    """Run `attempt` (WATCH, read, MULTI, write, EXEC) until no watched key changed under it.

    When the connection fails around EXEC we cannot know whether the writes were applied;
    `recover` looks for a stamp the attempt wrote and returns its result if it was.
    """
    with client.pipeline(transaction=True) as pipe:
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            try:
                return attempt(pipe)
            except redis.WatchError as exc:
                if lost_connection(exc) and recover is not None:
                    found = recover()
                    if found is not None:
                        return found
            except (redis.ConnectionError, redis.TimeoutError):
                # The reply to EXEC was lost and reconnecting failed too (a server busy past
                # our timeout): the writes may be there. Otherwise the error stands.
                if recover is not None and (found := recover()) is not None:
                    return found
                raise
            finally:
                pipe.reset()
    raise TransactionFailed(f"{what}: no transaction after {MAX_TRANSACTION_ATTEMPTS} attempts")
