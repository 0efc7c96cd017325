"""The broker connection closes cleanly after Redis went away while a message was reserved
(what made Celery log "Unrecoverable error" and stop consuming; taskqueue/kombu_redis.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors

from mysisterdb.redis_server import RedisServer, start_redis
from taskqueue.app import KOMBU_TRANSPORT


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(data_dir=tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


def reserved_then_redis_gone(server: RedisServer, transport: str) -> Connection:
    """A connection holding one reserved (unacked) message, as Celery's consumer leaves it
    after `collect()` on a broken connection: Redis gone, the transport detached."""
    conn = Connection(server.url, transport=transport, transport_options={"socket_timeout": 2})
    queue = Queue("t", Exchange("t"), "t")
    with conn.Producer() as producer:
        producer.publish({"prompt": 1}, exchange=queue.exchange, routing_key="t",
                         declare=[queue])
    received: list[object] = []
    conn.Consumer([queue], callbacks=[lambda _body, msg: received.append(msg)],
                  accept=["json"]).consume()
    conn.drain_events(timeout=2)
    assert len(received) == 1  # reserved, not acknowledged
    server.process.kill()
    server.process.wait(timeout=5)
    conn._do_close_transport()  # what Connection.collect() does (Celery calls it first)
    return conn


def test_closing_after_redis_went_away_is_a_connection_error(doomed_redis: RedisServer) -> None:
    conn = reserved_then_redis_gone(doomed_redis, KOMBU_TRANSPORT)
    ignore_errors(conn, conn.close)  # Celery's own call: ignores connection errors only


def test_the_stock_transport_still_has_the_defect(doomed_redis: RedisServer) -> None:
    """When a kombu release fixes it, this fails: then taskqueue/kombu_redis.py can go."""
    conn = reserved_then_redis_gone(doomed_redis, "redis")
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(conn, conn.close)


def test_publishes_and_acks_reuse_one_client_per_pool(doomed_redis: RedisServer) -> None:
    conn = Connection(doomed_redis.url, transport=KOMBU_TRANSPORT,
                      transport_options={"socket_timeout": 2})
    try:
        queue = Queue("r", Exchange("r"), "r")
        received: list[object] = []
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="r",
                                 declare=[queue])
        channel = conn.default_channel
        client = channel._create_client()
        assert channel._create_client() is client  # the publishes above used it too
        conn.Consumer([queue], callbacks=[lambda body, msg: (received.append(body), msg.ack())],
                      accept=["json"]).consume()
        while len(received) < 3:
            conn.drain_events(timeout=2)
        assert received == [{"n": 0}, {"n": 1}, {"n": 2}] and channel._create_client() is client
        channel._disconnect_pools()  # what a reconnect or a fork does: a new pool, a new client
        assert channel._create_client() is not client
    finally:
        conn.release()


def test_publishes_read_a_direct_exchanges_bindings_once(doomed_redis: RedisServer) -> None:
    conn = Connection(doomed_redis.url, transport=KOMBU_TRANSPORT,
                      transport_options={"socket_timeout": 2})
    try:
        queue = Queue("b", Exchange("b"), "b")
        channel = conn.default_channel
        before = commands_run(channel, "smembers")
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="b",
                                 declare=[queue])
        assert commands_run(channel, "smembers") - before == 1  # not one per publish
        assert channel.client.llen("b") == 3  # every message reached the bound queue
        # A binding made through the channel is read again, as kombu does without the cache.
        other = Queue("b2", Exchange("b"), "b")
        other.bind(channel).declare()
        with conn.Producer() as producer:
            producer.publish({"n": 3}, exchange=queue.exchange, routing_key="b")
        assert channel.client.llen("b") == 4 and channel.client.llen("b2") == 1
        assert commands_run(channel, "smembers") - before == 2
    finally:
        conn.release()


def test_an_exchange_bound_to_other_queues_is_read_at_each_publish(
        doomed_redis: RedisServer) -> None:
    """As Celery's control replies: each `inspect` binds a queue of its own to
    `reply.celery.pidbox` from its own connection, and the worker must reach each one."""
    worker, asking = (Connection(doomed_redis.url, transport=KOMBU_TRANSPORT,
                                 transport_options={"socket_timeout": 2}) for _ in range(2))
    try:
        replies = Exchange("reply.test.pidbox", type="direct")
        for ticket in ("ticket-1", "ticket-2"):
            Queue(ticket, replies, ticket).bind(asking.default_channel).declare()
            with worker.Producer() as producer:
                producer.publish({"pong": ticket}, exchange=replies, routing_key=ticket)
            assert asking.default_channel.client.llen(ticket) == 1, ticket
    finally:
        worker.release()
        asking.release()


def commands_run(channel: object, name: str) -> int:
    """How many times Redis ran a command (INFO commandstats)."""
    stats = channel.client.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
