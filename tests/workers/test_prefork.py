"""README/runbook: by default the chat worker forks every slot at start and warms each child
(its runtime built before any prompt), so a burst from idle runs on processes that exist:
nothing is forked on demand. Seen from outside: the worker's pool children, counted before
any prompt; their "warm" log lines; and the pid each job records (`worker_pid`).

And a stopping worker always ends (workers/bounded_stop.py): still there the longest hard limit
plus MYSISTERDB_WORKER_STOP_GRACE_S after its stop began, it kills its pool and exits 1. That
test leaves the module's stack without a worker: it runs last (conftest.LAST_IN_MODULE), so
one stack serves both."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import redis

from core import keys
from mysisterdb.redis_server import RedisServer
from tests.conftest import TEST_LIMITS, own_stack
from tests.procs import Stack, wait_for

PREFORK_DB = 14
SLOTS = 4
GRACE_S = 1.0
# The stack's hard limits (chat 6 s; summary set alike) plus the grace.
STOP_BOUND_S = float(TEST_LIMITS["MYSISTERDB_TASK_TIME_LIMIT"]) + GRACE_S
MARGIN_S = 1.0  # the timer's thread, the kills and a reap on a loaded 2-core machine
KILLED_WITHIN_S = 2.0  # a SIGKILLed child's death, once the worker has exited


@pytest.fixture(scope="module")
def prefork_stack(redis_server: RedisServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The maximum alone, as an operator would set it: the minimum follows it. The stop's
    # grace and the summaries' hard limit matter only to the bounded stop, at the end.
    yield from own_stack(redis_server, tmp_path_factory, db=PREFORK_DB, name="prefork",
                         extra={"MYSISTERDB_WORKER_CONCURRENCY": str(SLOTS),
                                "MYSISTERDB_WORKER_STOP_GRACE_S": str(GRACE_S),
                                "MYSISTERDB_SUMMARY_TIME_LIMIT":
                                    TEST_LIMITS["MYSISTERDB_TASK_TIME_LIMIT"]})


def pool_children(stack: Stack) -> set[int]:
    return {c.pid for c in psutil.Process(stack.procs["worker"].process.pid).children()}


def warm_children(stack: Stack) -> set[int]:
    return {int(pid) for pid in re.findall(r"pool child (\d+) warm in",
                                           stack.procs["worker"].log())}


def test_every_slot_is_forked_and_warm_before_the_first_prompt(prefork_stack: Stack) -> None:
    stack = prefork_stack
    wait_for(lambda: len(warm_children(stack)) >= SLOTS, timeout_s=30,
             what=f"{SLOTS} warm pool children")
    forked = pool_children(stack)
    assert len(forked) == SLOTS
    assert warm_children(stack) == forked

    # A burst of as many prompts as slots runs on those children: none forked for it.
    jobs = [stack.submit("#sim:sleep=1 いっせいに", conversation_id=f"burst-{i}")
            for i in range(SLOTS)]
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        pids = set()
        for job in jobs:
            assert stack.wait_job(job["id"])["status"] == "completed"
            raw = client.get(keys.job(job["id"]))
            assert raw is not None
            pids.add(json.loads(raw)["worker_pid"])
    finally:
        client.close()
    assert pids <= forked, (pids, forked)
    assert pool_children(stack) == forked


def test_a_worker_whose_pool_never_answers_ends_its_stop_within_the_bound(prefork_stack: Stack) -> None:
    stack = prefork_stack
    job = stack.submit("待っててね #sim:hold=forever", conversation_id="bounded-stop")
    # Its first chunk stored, so that its hard limit ends it `incomplete` with that text.
    stack.wait_job(job["id"], until=lambda j: bool(j["partial_reply"]))
    worker = psutil.Process(stack.procs["worker"].process.pid)
    children = worker.children()
    for child in children:  # a pool that will never answer the shutdown, busy or idle
        child.suspend()
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = stack.procs["worker"].process.wait(timeout=STOP_BOUND_S + 30)
    took = time.monotonic() - began
    assert code == 1
    assert took < STOP_BOUND_S + MARGIN_S, f"stopped after {took:.1f} s"
    # SIGKILLed before the worker's exit, a child dies when it is next scheduled: on a loaded
    # box that can come after the worker's status was read (seen here: one left running).
    _, alive = psutil.wait_procs(children, timeout=KILLED_WITHIN_S)
    assert not [c.pid for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert "worker still stopping" in stack.procs["worker"].log()
    # Its hard limit still ends it during the stop, with the text it had (one chunk).
    ended = stack.wait_job(job["id"])
    assert (ended["status"], ended["error"]["code"]) == ("incomplete", "timeout"), ended
