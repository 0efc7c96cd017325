"""README/runbook: a pool child is replaced after MYSISTERDB_WORKER_MAX_TASKS_PER_CHILD tasks
(leaks and fragmentation do not pile up). Seen from the jobs: each job records the pid of the
pool process that ran it (`worker_pid`), and with one slot and 2 tasks per child no pid runs
more than two prompts, so four prompts in a row run on at least two processes."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from core import keys
from mysisterdb.redis_server import RedisServer
from tests.conftest import own_stack
from tests.procs import Stack

RECYCLING_DB = 11
TASKS_PER_CHILD = 2
PROMPTS = 4


@pytest.fixture(scope="module")
def recycling_stack(redis_server: RedisServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=RECYCLING_DB, name="recycling",
                         extra={"MYSISTERDB_WORKER_MAX_TASKS_PER_CHILD": str(TASKS_PER_CHILD),
                                "MYSISTERDB_WORKER_CONCURRENCY": "1",
                                "MYSISTERDB_WORKER_MIN_CONCURRENCY": "1"})


def worker_pid(stack: Stack, job_id: str) -> int:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        raw = client.get(keys.job(job_id))
    finally:
        client.close()
    assert raw is not None
    pid = json.loads(raw)["worker_pid"]
    assert isinstance(pid, int)
    return pid


def test_a_pool_child_is_replaced_after_its_max_tasks(recycling_stack: Stack) -> None:
    stack = recycling_stack
    cid = f"c-{uuid.uuid4().hex[:12]}"
    main_pid = stack.procs["worker"].process.pid
    pids = []
    for n in range(PROMPTS):
        job = stack.submit(f"{n} 番目", conversation_id=cid)
        assert stack.wait_job(job["id"])["status"] == "completed"
        pids.append(worker_pid(stack, job["id"]))
    # The prompts ran in pool children of the worker, never in its main process.
    assert main_pid not in pids
    runs = Counter(pids)
    assert max(runs.values()) <= TASKS_PER_CHILD, pids
    assert len(runs) >= PROMPTS // TASKS_PER_CHILD, pids
