"""Following a job: long-poll (?wait=&after=) and Server-Sent Events, against the real stack.

A parked job is stored through the real lifecycle but never handed to the broker (taken
out of the outbox): it stays queued until the test changes it, through the same lifecycle
a worker uses. So "a change" happens exactly when the test says, and waits in between are
real waits. The last SSE test follows a real job through the worker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from context.types import Message, reply_seq
from core import keys
from core.history import history_store
from core.lifecycle import Lifecycle, Limits, Outcome
from core.models import JobStatus, StepName, iso, utcnow
from tests.procs import Stack, followers, wait_for

WAKE_MARGIN_S = 1.0  # the promise is 300 ms after a change; generous on a busy 2-core box


def once_followed(stack: Stack, change: Any, *, more_than: int) -> threading.Thread:
    """Make the change from another thread as soon as the API has a new follower waiting:
    the change then reaches a request that is already waiting, which is what is tested."""
    def run() -> None:
        wait_for(lambda: followers(stack) > more_than, timeout_s=20,
                 what="the request to be waiting on the job")
        change()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@dataclass
class Parked:
    stack: Stack
    lifecycle: Lifecycle
    job_id: str

    def job(self) -> dict[str, Any]:
        return self.stack.job(self.job_id)

    def complete(self, text: str = "おまたせ") -> None:
        """As a worker would: claimed (a queued job never completes: core/states.py), then
        ended with a reply."""
        job = self.lifecycle.jobs.get(self.job_id)
        if job.status is JobStatus.QUEUED:
            self.lifecycle.claim(self.job_id)
        self.lifecycle.end(self.job_id, Outcome.completed(Message(
            seq=reply_seq(job.turn), role="assistant", text=text, tokens=1,
            created_at=iso(utcnow()) or "", job_id=self.job_id)))


@pytest.fixture
def parked(stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> Iterator[Parked]:
    lifecycle = Lifecycle(client=stack_redis, history=history_store(stack_redis),
                          limits=Limits(hard_limit_s=6, queue_timeout_s=600), broker=None)
    job = lifecycle.submit(conversation_id=conversation_id, text="止まっててね", tokens=3).job
    stack_redis.zrem(keys.outbox(), job.id)  # nobody will dispatch it: only we change it
    yield Parked(stack=stack, lifecycle=lifecycle, job_id=job.id)
    lifecycle.end(job.id, Outcome.cancelled())


def long_poll(stack: Stack, job_id: str, **params: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.get(f"{stack.api_url}/api/jobs/{job_id}", params=params, timeout=40)
    return r, time.monotonic() - started


def test_long_poll_answers_soon_after_a_change(parked: Parked) -> None:
    before = parked.job()
    woke: list[float] = []

    def change() -> None:
        parked.lifecycle.claim(parked.job_id)
        woke.append(time.monotonic())

    changer = once_followed(parked.stack, change, more_than=followers(parked.stack))
    r, _ = long_poll(parked.stack, parked.job_id, wait=20, after=before["sequence"])
    answered = time.monotonic()
    changer.join()
    assert r.status_code == 200 and r.json()["status"] == "in_progress"
    assert r.json()["sequence"] > before["sequence"]
    assert answered - woke[0] < WAKE_MARGIN_S, answered - woke[0]


def test_long_poll_without_a_change_answers_when_the_wait_ends(parked: Parked) -> None:
    before = parked.job()
    r, elapsed = long_poll(parked.stack, parked.job_id, wait=1.5, after=before["sequence"])
    assert r.status_code == 200 and r.json() == before
    assert 1.5 <= elapsed < 1.5 + WAKE_MARGIN_S, elapsed


def test_after_past_the_sequence_waits_and_behind_it_answers_at_once(parked: Parked) -> None:
    parked.lifecycle.claim(parked.job_id)
    parked.lifecycle.start_step(parked.job_id, StepName.LOAD_HISTORY)
    now = parked.job()
    r, elapsed = long_poll(parked.stack, parked.job_id, wait=20, after=now["sequence"] - 1)
    assert r.status_code == 200 and r.json() == now and elapsed < WAKE_MARGIN_S, elapsed
    r, elapsed = long_poll(parked.stack, parked.job_id, wait=1, after=now["sequence"] + 5)
    assert r.json() == now and elapsed >= 1.0


def test_wait_without_after_waits_for_the_next_change_and_a_final_job_answers_at_once(
        parked: Parked) -> None:
    r, elapsed = long_poll(parked.stack, parked.job_id, wait=1)
    assert r.json()["status"] == "queued" and elapsed >= 1.0
    parked.complete()
    r, elapsed = long_poll(parked.stack, parked.job_id, wait=20)
    assert r.json()["status"] == "completed" and elapsed < WAKE_MARGIN_S


def test_wait_over_30_seconds_is_refused_in_words(parked: Parked) -> None:
    r = httpx.get(f"{parked.stack.api_url}/api/jobs/{parked.job_id}", params={"wait": 31},
                  timeout=5)
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "待ち時間（wait）は 30.0 以下にしてください。"


# -- Server-Sent Events -------------------------------------------------------------------


@dataclass
class Event:
    id: int
    job: dict[str, Any]


def read_events(response: httpx.Response) -> Iterator[Event]:
    """Parse text/event-stream frames (keep-alive comments are skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield Event(id=int(fields["id"]), job=json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value


def test_sse_delivers_every_change_in_order_and_ends_after_the_final_state(
        parked: Parked) -> None:
    lc, job_id = parked.lifecycle, parked.job_id
    first = parked.job()
    # Each change is made once the client has the event of the one before: every change
    # reaches a stream that is waiting, and each must arrive as its own event.
    changes = [lambda: lc.claim(job_id),
               lambda: lc.start_step(job_id, StepName.GENERATE),
               lambda: lc.show_text(job_id, "お"),
               lambda: lc.show_text(job_id, "おか"),
               parked.complete]
    seen: list[Event] = []
    with httpx.stream("GET", f"{parked.stack.api_url}/api/jobs/{job_id}/events",
                      timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in read_events(r):  # ends by itself after the final state
            seen.append(event)
            if len(seen) <= len(changes):
                changes[len(seen) - 1]()
    assert seen[0].job == first  # the state as it was, then each change as it happened
    assert [e.id for e in seen] == list(range(first["sequence"], seen[-1].id + 1))
    assert all(e.id == e.job["sequence"] for e in seen)
    assert [e.job["partial_reply"] for e in seen] == ["", "", "", "お", "おか", "おか"]
    assert seen[-1].job["reply"] == "おまたせ"
    assert [e.job["status"] for e in seen] == ["queued"] + ["in_progress"] * 4 + ["completed"]
    assert seen[-1].job == parked.job()


def test_sse_follows_a_real_job_through_the_worker(stack: Stack, conversation_id: str) -> None:
    job = stack.submit("ゆっくり #sim:sleep=0.3", conversation_id=conversation_id)
    with httpx.stream("GET", f"{stack.api_url}/api/jobs/{job['id']}/events", timeout=30) as r:
        seen = list(read_events(r))
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids)) and seen[-1].job["status"] == "completed"
    assert seen[-1].job == stack.job(job["id"])


def test_sse_resumes_after_last_event_id(stack: Stack, conversation_id: str) -> None:
    done = stack.wait_job(stack.submit("覚えてる？", conversation_id=conversation_id)["id"])
    url = f"{stack.api_url}/api/jobs/{done['id']}/events"
    with httpx.stream("GET", url, headers={"Last-Event-ID": str(done["sequence"] - 1)},
                      timeout=10) as r:
        events = list(read_events(r))
    assert [e.id for e in events] == [done["sequence"]] and events[0].job == done
    # A client that already has the final state is told there is nothing more (EventSource
    # stops reconnecting on 204).
    r = httpx.get(url, headers={"Last-Event-ID": str(done["sequence"])}, timeout=10)
    assert r.status_code == 204 and r.content == b""
    r = httpx.get(url, params={"after": done["sequence"]}, timeout=10)
    assert r.status_code == 204


def test_sse_resumed_mid_stream_sends_only_what_is_new(parked: Parked) -> None:
    lc, job_id = parked.lifecycle, parked.job_id
    lc.claim(job_id)
    had = parked.job()
    changer = once_followed(parked.stack, lambda: lc.show_text(job_id, "続き"),
                            more_than=followers(parked.stack))
    seen: list[Event] = []
    with httpx.stream("GET", f"{parked.stack.api_url}/api/jobs/{job_id}/events",
                      headers={"Last-Event-ID": str(had["sequence"])}, timeout=30) as r:
        for event in read_events(r):
            seen.append(event)
            if len(seen) == 1:
                parked.complete()
    changer.join()
    assert [e.id for e in seen] == [had["sequence"] + 1, had["sequence"] + 2]
    assert [e.job["partial_reply"] for e in seen] == ["続き", "続き"]
    assert seen[-1].job["status"] == "completed"


def test_sse_for_an_unknown_job_is_404(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/api/jobs/{'f' * 32}/events", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- many waiters ---------------------------------------------------------------------------


WAITERS = 200


def test_200_waiters_hold_no_thread_and_health_stays_up(parked: Parked) -> None:
    """Behaviour only (figures: bench/longpoll_bench.py): with 200 long-polls waiting, health
    (which needs the thread pool) still answers within its 1 s promise, and every waiter
    wakes when the job changes."""
    stack, before = parked.stack, parked.job()
    base = followers(stack)

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=WAITERS + 10)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits) as client:
            waiters = [asyncio.create_task(client.get(
                f"/api/jobs/{parked.job_id}", params={"wait": 25, "after": before["sequence"]}))
                for _ in range(WAITERS)]
            await asyncio.to_thread(wait_for, lambda: followers(stack) >= base + WAITERS,
                                    timeout_s=30, what="every long-poll waiting")
            assert not any(w.done() for w in waiters)
            health = []
            for _ in range(5):
                started = time.monotonic()
                health.append(await client.get("/api/health", timeout=5))
                assert time.monotonic() - started < 1.0 + WAKE_MARGIN_S
            await asyncio.to_thread(parked.lifecycle.claim, parked.job_id)
            return await asyncio.gather(*waiters), health

    answers, health = asyncio.run(scenario())
    assert all(h.status_code == 200 for h in health)
    assert all(a.status_code == 200 and a.json()["status"] == "in_progress" for a in answers)
