"""kombu's Redis transport, with one defect of its closing path turned into what it is.

When the broker connection drops while the worker holds a reserved message, Celery 5.7
(`Consumer.on_connection_error_after_connected`) first `collect()`s the connection, which
detaches the transport (`transport.client = None`), then closes it again. That second close
reaches `Channel.close` -> `QoS.restore_unacked_once` -> `_connparams`, which reads
`self.connection.client.hostname` and raises AttributeError. AttributeError is not one of
the transport's connection errors, so Celery logs "Unrecoverable error" and the worker stops
consuming (seen here when Redis was restarted or killed under load; the same code is on
Celery's main branch, 2026-08).

A closed connection is a connection error: raising redis's ConnectionError (one of the
transport's connection errors) lets Celery ignore it while closing and reconnect as it does
for any other loss. The reserved message stays in kombu's `unacked` hash; the lifecycle's
sweep sends its prompt again (mysisterdb/broker.py), so nothing is lost.

And one cost: kombu builds a new `redis.Redis` around its connection pool for every publish
and every ack (`Channel.conn_or_acquire`), and redis-py's constructor fills a table of ~170
reply callbacks each time: a fifth of the worker's main process's CPU per prompt (issue 21's
profile). The client holds no connection of its own (each command takes one from the pool),
so one per pool serves them all (`ReusedClient`).

And one round trip: before every publish kombu reads the exchange's bindings from Redis
(`SMEMBERS _kombu.binding.<exchange>`), on the path from a submit to its worker. Our task
exchanges are direct and bound once to a queue of the same name, never unbound: a table
read once per channel is the table (`CachedBindings`; a bind or delete through the
channel drops it). An empty table is not kept, so a binding not declared yet is read again,
nor is any table of another shape (Celery's control replies bind a new queue per question).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class ClosedIsConnectionError:
    """The fix, for both channels: a closed connection is a connection error."""

    connection: Any

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was already closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class ReusedClient:
    """One synchronous client per connection pool instead of one per publish or ack."""

    pool: Any
    _reused: tuple[Any, Any] | None = None  # (pool, client)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the channel's own client (BRPOP), cached by kombu itself
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        if self._reused is None or self._reused[0] is not pool:  # a new pool after a reconnect
            self._reused = (pool, super()._create_client(asynchronous=False))  # type: ignore[misc]
        return self._reused[1]


class CachedBindings:
    """A task exchange's bindings (direct, to the queue of its own name), read from Redis
    once per channel; any other exchange's at each publish, as kombu does."""

    _tables: dict[str, list[Any]] | None = None

    def get_table(self, exchange: str) -> Any:
        if self.typeof(exchange).type != "direct":  # type: ignore[attr-defined]
            return super().get_table(exchange)  # type: ignore[misc]
        if self._tables is None:
            self._tables = {}
        table = self._tables.get(exchange)
        if table is None:
            table = super().get_table(exchange)  # type: ignore[misc]
            # Only a task exchange's shape (each binding to the queue of its own name) is
            # kept: Celery's control replies go through `reply.celery.pidbox`, which every
            # `inspect` binds to a queue of its own from its own connection; kept, a worker's
            # replies went to the first such queue only ("No nodes replied", seen in CI).
            if table and all(binding[-1] == exchange for binding in table):
                self._tables[exchange] = table
        return table

    def _queue_bind(self, exchange: str, *args: Any, **kwargs: Any) -> Any:
        if self._tables is not None:
            self._tables.pop(exchange, None)
        return super()._queue_bind(exchange, *args, **kwargs)  # type: ignore[misc]

    def _delete(self, queue: str, exchange: str, *args: Any, **kwargs: Any) -> Any:
        if self._tables is not None:
            self._tables.pop(exchange, None)
        return super()._delete(queue, exchange, *args, **kwargs)  # type: ignore[misc]


class Channel(CachedBindings, ReusedClient, ClosedIsConnectionError, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(CachedBindings, ReusedClient, ClosedIsConnectionError,
                      kombu_redis.SentinelChannel):
    """Its pool is built from _connparams too (_sentinel_managed_pool): the same defect."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
