"""ChatService against a real Redis, with the broker replaced by a recording function."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from context.redis_store import RedisHistoryStore
from mysisterdb import keys
from mysisterdb.chat import ChatService
from mysisterdb.errors import QueueFull, StoreUnavailable
from mysisterdb.jobs import JobStore


class BrokenHistory(RedisHistoryStore):
    def append(self, *args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("redis went away")


def service(client: redis.Redis, *, history: RedisHistoryStore | None = None,
            enqueue: Any = None, max_queue_depth: int = 100) -> tuple[ChatService, list[str]]:
    sent: list[str] = []
    return ChatService(redis=client, jobs=JobStore(client),
                       history=history or RedisHistoryStore(client, key_of=keys.conv_key),
                       enqueue=enqueue or sent.append, max_message_chars=8000,
                       max_message_tokens=3000, max_queue_depth=max_queue_depth), sent


def test_message_and_job_are_stored_together(redis_client: redis.Redis) -> None:
    chat, sent = service(redis_client)
    job, created = chat.submit(conversation_id="c", text="  こんにちは ")
    assert created and sent == [job.id]
    stored = RedisHistoryStore(redis_client, key_of=keys.conv_key).last("c", limit=5)
    assert [(m.seq, m.text, m.job_id) for m in stored] == [(1, "こんにちは", job.id)]
    assert JobStore(redis_client).first_active_before("c", turn=2) == job.id


def test_a_failed_store_leaves_no_idempotency_key_message_or_job(redis_client: redis.Redis) -> None:
    broken, _ = service(redis_client, history=BrokenHistory(redis_client, key_of=keys.conv_key))
    with pytest.raises(redis.ConnectionError):
        broken.submit(conversation_id="c", text="hi", idempotency_key="k1")
    assert redis_client.get(keys.idempotency("k1")) is None
    assert redis_client.get(keys.conv_messages("c")) is None
    assert JobStore(redis_client).active_ids() == []  # no job without its message
    assert redis_client.get(keys.conv_turn("c")) is None  # no hole left in the turns
    ok, _ = service(redis_client)
    job, created = ok.submit(conversation_id="c", text="hi", idempotency_key="k1")
    assert created and job.turn == 1


def test_the_same_key_returns_the_same_job(redis_client: redis.Redis) -> None:
    chat, sent = service(redis_client)
    first, created = chat.submit(conversation_id="c", text="hi", idempotency_key="k2")
    again, created_again = chat.submit(conversation_id="c", text="hi", idempotency_key="k2")
    assert created and not created_again and again.id == first.id and sent == [first.id]


def test_enqueue_failure_ends_the_job_but_keeps_the_message(redis_client: redis.Redis) -> None:
    def broken(_job_id: str) -> None:
        raise OSError("broker down")

    chat, _ = service(redis_client, enqueue=broken)
    with pytest.raises(StoreUnavailable):
        chat.submit(conversation_id="c", text="消えないで")
    (message,) = RedisHistoryStore(redis_client, key_of=keys.conv_key).last("c", limit=5)
    job = JobStore(redis_client).get(message.job_id or "")
    assert (job.status.value, job.error and job.error.code) == ("failed", "enqueue_failed")


def test_backpressure_refuses_before_storing(redis_client: redis.Redis) -> None:
    for i in range(2):
        redis_client.lpush("chat", f"message {i}")
    chat, sent = service(redis_client, max_queue_depth=2)
    with pytest.raises(QueueFull):
        chat.submit(conversation_id="c", text="hi", idempotency_key="k3")
    assert sent == [] and redis_client.get(keys.conv_turn("c")) is None
    assert redis_client.get(keys.idempotency("k3")) is None


def test_concurrent_requests_with_one_key_make_one_job(redis_client: redis.Redis) -> None:
    from concurrent.futures import ThreadPoolExecutor

    chat, sent = service(redis_client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: chat.submit(conversation_id="c", text="hi",
                                                      idempotency_key="same"), range(8)))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1 and len(sent) == 1
    assert len(RedisHistoryStore(redis_client, key_of=keys.conv_key).last("c", limit=10)) == 1


def test_concurrent_messages_of_one_conversation_get_distinct_turns(
        redis_client: redis.Redis) -> None:
    from concurrent.futures import ThreadPoolExecutor

    chat, _ = service(redis_client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(pool.map(lambda i: chat.submit(conversation_id="c", text=f"m{i}")[0],
                             range(8)))
    assert sorted(j.turn for j in jobs) == list(range(1, 9))
    seqs = [m.seq for m in RedisHistoryStore(redis_client, key_of=keys.conv_key).last("c", limit=20)]
    assert seqs == [2 * t - 1 for t in range(1, 9)]
