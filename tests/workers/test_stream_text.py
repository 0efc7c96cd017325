"""The coalesced text writer against a real redis-server, through the real lifecycle: the
first chunk at once, later ones together when the interval is up (by its timer, with no
chunk after them), every write the whole text, a job that ended stops the stream; the
opening write (generate's start) made with the first chunk, or by the timer without one."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from core.history import history_store
from core.lifecycle import JobGone, Lifecycle, Limits, Outcome
from core.models import StepName
from tests.procs import wait_for
from workers.stream_text import CoalescedText, later

INTERVAL_S = 0.5


@pytest.fixture
def running(redis_client: redis.Redis) -> tuple[Lifecycle, str]:
    lc = Lifecycle(client=redis_client, history=history_store(redis_client),
                   limits=Limits(hard_limit_s=60, queue_timeout_s=600), broker=None)
    job = lc.submit(conversation_id="c-stream", text="はなして", tokens=3).job
    lc.claim(job.id)
    return lc, job.id


def writer(lc: Lifecycle, job_id: str, seen: list[str], *, before: str = "") -> CoalescedText:
    def write(whole: str) -> None:
        seen.append(whole)
        lc.show_text(job_id, whole)

    return CoalescedText(write, interval_s=INTERVAL_S, before=before)


def test_first_chunk_at_once_later_ones_together_when_the_interval_is_up(
        running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    text = writer(lc, job_id, seen)
    text("あ")
    assert lc.jobs.get(job_id).partial_reply == "あ"  # not delayed
    started = time.monotonic()
    text("い")
    text("う")
    assert lc.jobs.get(job_id).partial_reply == "あ"  # waiting for the interval
    # No chunk follows: the timer writes them, whole, once the interval is up.
    wait_for(lambda: lc.jobs.get(job_id).partial_reply == "あいう", timeout_s=5,
             what="the pending chunks", interval_s=0.01)
    assert time.monotonic() - started >= INTERVAL_S * 0.9
    text("え")
    text.close()
    assert seen == ["あ", "あいう", "あいうえ"]
    assert lc.jobs.get(job_id).partial_reply == "あいうえ"


def test_a_continue_grows_from_the_text_it_continues(running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    text = writer(lc, job_id, seen, before="まえの")
    text("つづき")
    text.close()
    assert seen == ["まえのつづき"]


def test_stop_drops_the_pending_write_and_close_writes_it(
        running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    text = writer(lc, job_id, seen)
    text("あ")
    text("い")
    text.stop()  # the end of a completed job writes the text itself
    # Pending writes run in the order they are due: once a call due later than the
    # dropped write has run, that write would have happened. It did not.
    passed = threading.Event()
    later().call_in(INTERVAL_S, passed.set)
    wait_for(passed.is_set, timeout_s=5, what="a call due after the dropped write",
             interval_s=0.01)
    assert seen == ["あ"]
    text.close()
    assert seen == ["あ", "あい"]


def test_a_job_that_ended_stops_the_stream_at_its_next_chunk(
        running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    text = writer(lc, job_id, seen)
    text("あ")
    text("い")  # pending: the timer's write finds the job cancelled
    lc.end(job_id, Outcome.cancelled())
    wait_for(lambda: text.job_ended, timeout_s=5, what="the timer's write", interval_s=0.01)
    assert seen[-1] == "あい"
    with pytest.raises(JobGone):
        text("う")


def opening_writer(lc: Lifecycle, job_id: str, seen: list[str]) -> CoalescedText:
    """As the worker's: the opening write starts generate, with the text if there is any."""
    opened = [False]

    def write(whole: str) -> None:
        seen.append(whole)
        if opened[0]:
            lc.show_text(job_id, whole)
            return
        lc.advance(job_id, done=StepName.BUILD_CONTEXT, start=StepName.GENERATE, detail="built",
                   text=whole or None)
        opened[0] = True

    return CoalescedText(write, interval_s=INTERVAL_S, opening=True)


def generate_step(lc: Lifecycle, job_id: str) -> str:
    return lc.jobs.get(job_id).step(StepName.GENERATE).status.value


def test_the_first_chunk_carries_the_opening_in_one_write(
        running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    text = opening_writer(lc, job_id, seen)
    assert generate_step(lc, job_id) == "pending"  # no write of its own before the text
    text("あ")
    job = lc.jobs.get(job_id)
    assert (job.partial_reply, job.step(StepName.GENERATE).status.value) == ("あ", "in_progress")
    text.close()
    assert seen == ["あ"]


def test_without_a_chunk_the_opening_is_written_when_the_interval_is_up_and_the_first_chunk_still_at_once(
        running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    started = time.monotonic()
    text = opening_writer(lc, job_id, seen)
    # A model slow to its first chunk: the step's start is not held back longer than that.
    wait_for(lambda: generate_step(lc, job_id) == "in_progress", timeout_s=5,
             what="the opening write", interval_s=0.01)
    assert time.monotonic() - started >= INTERVAL_S * 0.9
    assert seen == [""]
    text("あ")
    assert lc.jobs.get(job_id).partial_reply == "あ"  # the first text is not delayed
    text.close()
    assert seen == ["", "あ"]


def test_close_makes_an_opening_still_due(running: tuple[Lifecycle, str]) -> None:
    lc, job_id = running
    seen: list[str] = []
    text = opening_writer(lc, job_id, seen)
    text.stop()
    assert generate_step(lc, job_id) == "pending"
    text.close()  # a failure is recorded next: it must name generate
    assert generate_step(lc, job_id) == "in_progress" and seen == [""]
