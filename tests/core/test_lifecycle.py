"""The lifecycle against a real redis-server, in process: the broker is a recording function.

These are the rules every path relies on: stored means dispatched (the outbox), only the
head of a conversation's line has a broker message, every end hands the line over in the
same transaction, a prompt is claimed at most once, the sweep ends what cannot end itself.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from context.redis_store import RedisHistoryStore
from context.tokens import count_tokens
from context.types import Message, reply_seq
from core import keys
from core.access import OWNER
from core.chat import ChatService
from core.errors import Conflict, ErrorCode, NotFound, QueueFull
from core.history import history_store
from core.jobs import JobStore
from core.lifecycle import ClaimStatus, JobGone, Lifecycle, Limits, Outcome
from core.models import JobStatus, StepName, StepStatus, iso, utcnow

LIMITS = Limits(hard_limit_s=60, queue_timeout_s=600)


@dataclass
class Broker:
    """The broker port, recording what was asked of it; `down` makes every publish fail."""

    sent: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    down: bool = False

    def publish_chat(self, job_id: str) -> None:
        if self.down:
            raise redis.ConnectionError("broker unreachable")
        self.sent.append(job_id)

    def stop_chat(self, job_id: str) -> None:
        self.stopped.append(job_id)

    def request_summary(self, conversation_id: str, *, token: str) -> None:
        raise AssertionError("the lifecycle never queues a summary")

    def request_embedding(self, conversation_id: str, *, token: str = "",
                          after_seq: int | None = None) -> None:
        raise AssertionError("the lifecycle never queues an embedding")


def make(client: redis.Redis, broker: Broker | None = None, *,
         limits: Limits = LIMITS) -> Lifecycle:
    return Lifecycle(client=client, history=history_store(client), limits=limits,
                     broker=broker)


def submit(lc: Lifecycle, text: str, *, cid: str = "c", key: str | None = None) -> str:
    return lc.submit(conversation_id=cid, text=text, tokens=count_tokens(text),
                     idempotency_key=key).job.id


def reply(lc: Lifecycle, job_id: str, text: str = "はーい") -> Message:
    job = lc.jobs.get(job_id)
    return Message(seq=reply_seq(job.turn), role="assistant", text=text,
                   tokens=count_tokens(text), created_at=iso(utcnow()) or "", job_id=job_id)


def test_submit_stores_message_and_job_and_dispatches_the_head(redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    job_id = submit(lc, "こんにちは")
    stored = history_store(redis_client).last("c", limit=5)
    assert [(m.seq, m.text, m.job_id) for m in stored] == [(1, "こんにちは", job_id)]
    assert broker.sent == [job_id] and lc.jobs.line("c") == [job_id]
    assert redis_client.zcard(keys.outbox()) == 0  # published, so out of the outbox


def test_typed_ahead_turns_wait_in_redis_not_in_the_broker(redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    ids = [submit(lc, f"{i}番目") for i in range(3)]
    assert broker.sent == ids[:1]
    assert lc.jobs.line("c") == ids
    assert submit(lc, "別の会話", cid="other") in broker.sent  # lines are per conversation


def test_the_end_of_the_head_hands_the_line_to_the_next_turn(redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second, third = (submit(lc, f"{i}番目") for i in range(3))
    assert lc.claim(first).status is ClaimStatus.CLAIMED
    ended = lc.end(first, Outcome.completed(reply(lc, first)))
    assert ended is not None and ended.status is JobStatus.COMPLETED
    assert broker.sent == [first, second] and lc.jobs.line("c") == [second, third]
    history = history_store(redis_client).last("c", limit=10)
    assert [(m.seq, m.role) for m in history] == [(1, "user"), (2, "assistant"), (3, "user"),
                                                  (5, "user")]


def test_cancelling_a_middle_turn_keeps_the_head(redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second, third = (submit(lc, f"{i}番目") for i in range(3))
    cancelled = lc.cancel(second)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error is None
    assert broker.sent == [first] and lc.jobs.line("c") == [first, third]
    lc.cancel(first)  # the queued head: its turn passes to the third, not the second
    assert broker.sent == [first, third]
    with pytest.raises(Conflict):
        lc.cancel(first)


def test_claim_starts_only_the_head_and_only_once(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    first, second = submit(lc, "一"), submit(lc, "二")
    assert lc.claim(second).status is ClaimStatus.NOT_HEAD
    assert lc.jobs.get(second).status is JobStatus.QUEUED
    claim = lc.claim(first)
    assert claim.status is ClaimStatus.CLAIMED and claim.job is not None
    assert claim.job.attempts == 1 and lc.jobs.running_ids() == [first]
    assert lc.claim(first).status is ClaimStatus.DUPLICATE  # a second delivery
    assert lc.claim("no-such-job").status is ClaimStatus.GONE


def test_a_failed_publish_stays_in_the_outbox_and_the_sweep_sends_it(
        redis_client: redis.Redis) -> None:
    broker = Broker(down=True)
    lc = make(redis_client, broker)
    job_id = submit(lc, "届いて")  # stored: the answer is still a 202
    assert lc.jobs.get(job_id).status is JobStatus.QUEUED and broker.sent == []
    assert lc.jobs.outbox_due(before_epoch=float("inf")) == [job_id]
    assert lc.sweep().published == []  # younger than the grace: its own publisher may yet send it
    broker.down = False
    assert lc.sweep(outbox_grace_s=0).published == [job_id]
    assert broker.sent == [job_id] and lc.jobs.outbox_due(before_epoch=float("inf")) == []


def test_a_hand_over_written_without_a_publisher_is_sent_by_the_sweep(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    api = make(redis_client, broker)
    first, second = submit(api, "一"), submit(api, "二")
    parent = make(redis_client)  # like the worker's parent: never publishes itself
    parent.claim(first)
    parent.end(first, Outcome.failed(ErrorCode.WORKER_LOST, exception="kill -9", action="test"))
    assert broker.sent == [first]
    assert api.sweep(outbox_grace_s=0).published == [second]


def test_the_sweep_ends_a_job_running_past_the_hard_limit_and_hands_over(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second = submit(lc, "一"), submit(lc, "二")
    lc.claim(first)
    assert lc.sweep().ended == []  # within its limit
    dead = make(redis_client, broker, limits=Limits(hard_limit_s=0, grace_s=0,
                                                    queue_timeout_s=600))
    assert dead.sweep().ended == [first]
    job = lc.jobs.get(first)
    assert (job.status, job.error and job.error.code) == (JobStatus.FAILED, ErrorCode.WORKER_LOST)
    assert broker.sent == [first, second]
    incident = redis_client.lindex(keys.incidents(), 0)
    assert incident is not None and first.encode() in incident


def test_the_sweep_expires_a_job_that_never_started(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker(), limits=Limits(hard_limit_s=60, queue_timeout_s=0))
    job_id = submit(lc, "遅すぎた")
    assert lc.sweep().ended == [job_id]
    job = lc.jobs.get(job_id)
    assert (job.status, job.error and job.error.code) == (JobStatus.FAILED, ErrorCode.EXPIRED)
    assert job.error is not None and job.error.message == ErrorCode.EXPIRED.message


def test_a_job_ends_once_and_its_end_fills_the_steps(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    job_id = submit(lc, "一")
    lc.claim(job_id)
    lc.start_step(job_id, StepName.LOAD_HISTORY)
    ended = lc.end(job_id, Outcome.cancelled())
    assert ended is not None and ended.previous_status is JobStatus.IN_PROGRESS
    assert [s.status for s in ended.steps] == [StepStatus.CANCELLED, StepStatus.SKIPPED,
                                              StepStatus.SKIPPED, StepStatus.SKIPPED]
    assert lc.end(job_id, Outcome.completed(reply(lc, job_id))) is None  # final stays final
    assert history_store(redis_client).last("c", limit=5)[-1].role == "user"  # no reply
    with pytest.raises(JobGone):
        lc.start_step(job_id, StepName.BUILD_CONTEXT)
    assert lc.jobs.active_ids() == [] and lc.jobs.running_ids() == []


def test_a_failure_after_text_arrived_ends_incomplete_with_the_text(
        redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    job_id = submit(lc, "一")
    lc.claim(job_id)
    lc.show_text(job_id, "途中まで")
    ended = lc.end(job_id, Outcome.failed(ErrorCode.LLM_TIMEOUT, exception="stall", action="t"))
    assert ended is not None and ended.status is JobStatus.INCOMPLETE
    assert ended.partial_reply == "途中まで" and ended.error is not None
    assert ended.error.code is ErrorCode.LLM_TIMEOUT


def test_every_write_grows_the_sequence(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    job_id = submit(lc, "一")
    seen = [lc.jobs.get(job_id).sequence]
    lc.claim(job_id)
    seen.append(lc.jobs.get(job_id).sequence)
    lc.show_text(job_id, "あ")
    seen.append(lc.jobs.get(job_id).sequence)
    lc.end(job_id, Outcome.completed(reply(lc, job_id, "あ")))
    seen.append(lc.jobs.get(job_id).sequence)
    assert seen == sorted(set(seen)) and len(seen) == 4


def test_a_dead_head_without_a_record_is_dropped_when_the_next_turn_arrives(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second = submit(lc, "一"), submit(lc, "二")
    redis_client.delete(keys.job(first))  # its record expired or was deleted by hand
    assert lc.claim(second).status is ClaimStatus.NOT_HEAD
    assert lc.jobs.line("c") == [second] and broker.sent == [first, second]
    assert lc.claim(second).status is ClaimStatus.CLAIMED


class BrokenHistory(RedisHistoryStore):
    def append(self, *args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("redis went away")


def test_a_failed_store_leaves_no_key_message_job_or_turn(redis_client: redis.Redis) -> None:
    broken = Lifecycle(client=redis_client, limits=LIMITS, broker=Broker(),
                       history=BrokenHistory(redis_client, key_of=keys.conv_key))
    with pytest.raises(redis.ConnectionError):
        submit(broken, "hi", key="k1")
    assert redis_client.get(keys.idempotency(OWNER, "k1")) is None
    assert redis_client.exists(keys.conv_messages("c")) == 0
    assert JobStore(redis_client).active_ids() == [] and redis_client.zcard(keys.outbox()) == 0
    assert redis_client.get(keys.conv_turn("c")) is None  # no hole left in the turns
    assert make(redis_client, Broker()).jobs.get(submit(make(redis_client, Broker()), "hi",
                                                        key="k1")).turn == 1


def service(lc: Lifecycle, *, max_queue_depth: int = 100) -> ChatService:
    return ChatService(lifecycle=lc, max_message_chars=8000, max_message_tokens=3000,
                       max_queue_depth=max_queue_depth)


def test_the_same_key_returns_the_same_job(redis_client: redis.Redis) -> None:
    broker = Broker()
    chat = service(make(redis_client, broker))
    first = chat.submit(conversation_id="c", text="hi", idempotency_key="k2")
    again = chat.submit(conversation_id="c", text="hi", idempotency_key="k2")
    assert first.created and not again.created and again.job.id == first.job.id
    assert broker.sent == [first.job.id]


def test_backpressure_counts_typed_ahead_turns_and_refuses_before_storing(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    chat = service(lc, max_queue_depth=2)
    chat.submit(conversation_id="c", text="一")
    chat.submit(conversation_id="c", text="二")  # waits for its turn, not in the broker
    with pytest.raises(QueueFull):
        chat.submit(conversation_id="d", text="三", idempotency_key="k3")
    assert redis_client.get(keys.conv_turn("d")) is None
    assert redis_client.get(keys.idempotency(OWNER, "k3")) is None and len(broker.sent) == 1


def test_concurrent_requests_with_one_key_make_one_job(redis_client: redis.Redis) -> None:
    broker = Broker()
    chat = service(make(redis_client, broker))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: chat.submit(conversation_id="c", text="hi",
                                                      idempotency_key="same"), range(8)))
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1 and len(broker.sent) == 1
    assert len(history_store(redis_client).last("c", limit=10)) == 1


def test_concurrent_messages_of_one_conversation_get_distinct_turns_and_one_head(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    chat = service(make(redis_client, broker))
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(pool.map(lambda i: chat.submit(conversation_id="c", text=f"m{i}").job,
                             range(8)))
    assert sorted(j.turn for j in jobs) == list(range(1, 9))
    seqs = [m.seq for m in history_store(redis_client).last("c", limit=20)]
    assert seqs == [2 * t - 1 for t in range(1, 9)]
    assert broker.sent == [next(j.id for j in jobs if j.turn == 1)]


def test_a_head_whose_message_was_lost_is_sent_again_once_the_queue_is_empty(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    quick = Limits(hard_limit_s=60, queue_timeout_s=600, lost_message_s=0)
    lc = make(redis_client, broker, limits=quick)
    first, second = submit(lc, "一"), submit(lc, "二")
    redis_client.lpush("chat", "someone else's prompt")  # a backlog: waiting is no proof
    assert lc.sweep().published == []
    redis_client.delete("chat")  # the queue is empty and nobody holds it: it was lost
    assert lc.sweep().published == [first] and broker.sent == [first, first]
    lc.claim(first)  # once started it is never sent again, nor is a turn not yet handed over
    assert lc.sweep().published == [] and second not in broker.sent


# -- retry ------------------------------------------------------------------------------------


def fail(lc: Lifecycle, job_id: str, *, text: str | None = None) -> None:
    lc.claim(job_id)
    if text:
        lc.show_text(job_id, text)
    lc.end(job_id, Outcome.failed(ErrorCode.LLM_ERROR, exception="500", action="test"))


def test_retry_fills_the_same_turn_slot_with_the_stored_message(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first = submit(lc, "もう一回")
    fail(lc, first, text="途中")
    retried = lc.retry(first)
    assert (retried.turn, retried.retry_of, retried.status) == (1, first, JobStatus.QUEUED)
    assert broker.sent == [first, retried.id] and lc.jobs.line("c") == [retried.id]
    assert lc.jobs.job_id_for_turn("c", 1) == retried.id
    assert lc.claim(retried.id).status is ClaimStatus.CLAIMED
    lc.end(retried.id, Outcome.completed(reply(lc, retried.id, "こんどは返事")))
    history = history_store(redis_client).last("c", limit=5)
    assert [(m.seq, m.role, m.text) for m in history] == [(1, "user", "もう一回"),
                                                          (2, "assistant", "こんどは返事")]


def test_retry_refuses_what_cannot_be_retried(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    done, running = submit(lc, "一"), submit(lc, "二", cid="d")
    lc.claim(done)
    lc.end(done, Outcome.completed(reply(lc, done)))
    lc.claim(running)
    for job_id in (done, running):
        with pytest.raises(Conflict):
            lc.retry(job_id)
    lc.cancel(running)
    again = lc.retry(running)
    with pytest.raises(Conflict):  # the turn already has a newer job
        lc.retry(running)
    assert lc.jobs.line("d") == [again.id]
    with pytest.raises(NotFound):
        lc.retry("0" * 32)


def test_a_retried_earlier_turn_waits_for_the_running_later_turn_and_runs_next(
        redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second = submit(lc, "一"), submit(lc, "二")
    fail(lc, first)
    assert lc.claim(second).status is ClaimStatus.CLAIMED
    third = submit(lc, "三")
    retried = lc.retry(first)
    assert broker.sent == [first, second]  # a conversation never runs two jobs at once
    assert lc.jobs.line("c") == [retried.id, second, third]  # in turn order
    lc.end(second, Outcome.completed(reply(lc, second)))
    assert broker.sent == [first, second, retried.id]
    assert lc.claim(retried.id).status is ClaimStatus.CLAIMED
    lc.end(retried.id, Outcome.completed(reply(lc, retried.id)))
    assert broker.sent[-1] == third and lc.claim(third).status is ClaimStatus.CLAIMED


def test_a_retry_in_front_of_a_queued_head_runs_first(redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second = submit(lc, "一"), submit(lc, "二")
    lc.cancel(first)  # queued: the line passes to the second, which is dispatched
    retried = lc.retry(first)
    assert broker.sent == [first, second, retried.id]
    assert lc.claim(second).status is ClaimStatus.NOT_HEAD  # its message finds the retry ahead
    assert lc.claim(retried.id).status is ClaimStatus.CLAIMED
    lc.end(retried.id, Outcome.completed(reply(lc, retried.id)))
    assert broker.sent[-1] == second and lc.claim(second).status is ClaimStatus.CLAIMED


def test_a_retried_middle_turn_waits_for_the_earlier_turn(redis_client: redis.Redis) -> None:
    broker = Broker()
    lc = make(redis_client, broker)
    first, second = submit(lc, "一"), submit(lc, "二")
    lc.claim(first)
    lc.cancel(second)
    retried = lc.retry(second)
    assert broker.sent == [first] and lc.jobs.line("c") == [first, retried.id]
    lc.end(first, Outcome.completed(reply(lc, first)))
    assert broker.sent == [first, retried.id]


def test_a_retry_refused_by_backpressure_stores_nothing(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    failed = submit(lc, "一")
    fail(lc, failed)
    submit(lc, "待つ", cid="other")
    with pytest.raises(QueueFull):
        service(lc, max_queue_depth=1).retry(failed)
    assert lc.jobs.job_id_for_turn("c", 1) == failed and lc.jobs.line("c") == []
