"""README/runbook: by default the chat worker forks every slot at start and warms each child
(its runtime built before any prompt), so a burst from idle runs on processes that exist:
nothing is forked on demand. Seen from outside: the worker's pool children, counted before
any prompt; their "warm" log lines; and the pid each job records (`worker_pid`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import psutil
import pytest
import redis

from core import keys
from mysisterdb.redis_server import RedisServer
from tests.conftest import own_stack
from tests.procs import Stack, wait_for

PREFORK_DB = 14
SLOTS = 4


@pytest.fixture(scope="module")
def prefork_stack(redis_server: RedisServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The maximum alone, as an operator would set it: the minimum follows it.
    yield from own_stack(redis_server, tmp_path_factory, db=PREFORK_DB, name="prefork",
                         extra={"MYSISTERDB_WORKER_CONCURRENCY": str(SLOTS)})


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
