"""A worker stopped or killed, and Redis restarted, against a real stack on its own persistent
redis-server (AOF, as `mysisterdb up` runs it): what becomes of the prompts that got a 202.

The stack is this module's own: its tests stop and start the worker, so the shared stack's
worker is never taken away from the other tests. A test that leaves it without a worker need
not start one (~2.7 s of CPU): the next test does, if there is one (`restarts`).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from core.reservations import chat_reservations
from mysisterdb.redis_server import RedisServer, start_redis
from mysisterdb.simulator import reply_chunks
from tests.conftest import start_stack
from tests.procs import Stack, mysisterdb, start, wait_for

# A prompt reserved and never started is sent again by the sweep after 10 s
# (Lifecycle.stale_reservation_s); a few seconds more for the sweep's interval.
REDELIVERY_S = 30.0
# A running prompt whose worker died is ended by the sweep once it has outlived the hard limit
# (6 s in the test stack) + 2 s of grace; the sweep runs every second.
DEAD_AFTER_S = 6.0 + 2.0


@dataclass
class Restarts:
    stack: Stack
    server: RedisServer
    data_dir: Path
    log_dir: Path
    starts: int = 0

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.redis_url, socket_timeout=5)

    def kill_worker(self) -> None:
        """kill -9 of the whole worker: its main process and its pool, at once."""
        worker = self.stack.procs.pop("worker")
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)

    def start_worker(self) -> None:
        self.starts += 1
        log_dir = self.log_dir / f"worker{self.starts}"
        log_dir.mkdir()
        self.stack.procs["worker"] = start("worker", mysisterdb("worker"), env=self.stack.env,
                                           log_dir=log_dir)
        wait_for(lambda: self.health()["workers"]["ok"] is True, timeout_s=30,
                 what="the new worker online")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.stack.api_url}/api/health", timeout=5).json()  # type: ignore[no-any-return]

    def restart_redis(self) -> None:
        """kill -9 of redis-server, then a new one on the same port and data directory."""
        self.server.process.kill()
        self.server.process.wait(timeout=5)
        self.server = start_redis(port=self.server.port, data_dir=self.data_dir)


@pytest.fixture(scope="module")
def restarts_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restarts]:
    tmp = tmp_path_factory.mktemp("restarts")
    server = start_redis(data_dir=tmp / "redis")  # AOF on, as `mysisterdb up` runs it
    running = Restarts(stack=start_stack(redis_url=server.url, log_dir=tmp), server=server,
                       data_dir=tmp / "redis", log_dir=tmp)
    yield running
    running.stack.stop()
    running.server.stop()


@pytest.fixture
def restarts(restarts_stack: Restarts) -> Restarts:
    """The module's stack with a worker online: started here if the test before left none."""
    if "worker" not in restarts_stack.stack.procs:
        restarts_stack.start_worker()
    return restarts_stack


@pytest.fixture
def cid() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


POOL_SIZE = 2  # MYSISTERDB_WORKER_CONCURRENCY of test stacks (tests/conftest.py)


def pool_of(stack: Stack) -> list[psutil.Process]:
    """The worker's pool processes (`mysisterdb worker` execs Celery: its pid is the parent)."""
    return psutil.Process(stack.procs["worker"].process.pid).children()


def user_texts(stack: Stack, cid: str) -> list[str]:
    r = httpx.get(f"{stack.api_url}/api/conversations/{cid}/messages", timeout=5)
    return [t["user"]["text"] for t in r.json()["turns"]]


def test_a_prompt_reserved_by_a_killed_worker_runs_once_on_the_next_worker(
        restarts: Restarts, cid: str) -> None:
    stack, client = restarts.stack, restarts.client()
    # The pool cannot start anything: the parent still takes the message from the queue and
    # hands it to a child, so the prompt is reserved (unacknowledged) and never started.
    # Its whole pool first: a worker just (re)started by an earlier test may not have forked
    # its second process yet, and that one would run the prompt (seen in CI).
    wait_for(lambda: len(pool_of(stack)) == POOL_SIZE, timeout_s=30, what="the whole pool")
    for child in pool_of(stack):
        child.suspend()
    marker = f"拾ってね {cid}"
    job = stack.submit(marker, conversation_id=cid)
    wait_for(lambda: job["id"] in {r.job_id for r in chat_reservations(client)}, timeout_s=20,
             what="the worker to reserve the prompt")
    assert stack.job(job["id"])["status"] == "queued"
    restarts.kill_worker()
    restarts.start_worker()
    done = stack.wait_job(job["id"], timeout_s=REDELIVERY_S)
    assert done["status"] == "completed", done
    assert done["reply"]
    assert len(stack.sim_requests_asking(marker)) == 1  # run once
    assert user_texts(stack, cid) == [marker]


def incidents_of(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    found = httpx.get(f"{stack.api_url}/api/incidents", timeout=5).json()["incidents"]
    return [i for i in found if i["job_id"] == job_id]


def test_a_dead_worker_s_running_prompt_is_ended_worker_lost_by_the_sweep(
        restarts: Restarts, cid: str) -> None:
    stack = restarts.stack
    stuck = stack.submit("#worker:stuck", conversation_id=cid)["id"]  # blocked in C
    stack.wait_job(stuck, until=lambda j: j["steps"][2]["status"] == "in_progress")
    waiting = stack.submit(f"待ってるよ {cid}", conversation_id=cid)["id"]
    restarts.kill_worker()  # the parent and its pool: nobody left to end the prompt
    # Nobody reads the job meanwhile (a reader would end it too, and say so): the incident
    # list, which ends nothing, shows who did.
    wait_for(lambda: bool(incidents_of(stack, stuck)), timeout_s=DEAD_AFTER_S + 15,
             what="the dead worker's prompt to be ended")
    [incident] = incidents_of(stack, stuck)
    assert incident["kind"] == "worker_lost"
    assert incident["action"].startswith("失敗として終了させた（スイープ）"), incident
    ended = stack.job(stuck)
    assert (ended["status"], ended["error"]["code"]) == ("failed", "worker_lost")
    assert stack.job(waiting)["status"] == "queued"  # its turn came; no worker yet
    restarts.start_worker()
    assert stack.wait_job(waiting)["status"] == "completed"


def test_history_and_queued_prompts_survive_a_redis_restart(restarts: Restarts,
                                                            cid: str) -> None:
    stack = restarts.stack
    first = stack.wait_job(stack.submit("覚えててね", conversation_id=cid)["id"])
    assert first["status"] == "completed", first
    restarts.kill_worker()  # nobody consumes: the next prompts wait in the broker's queue
    queued = [stack.submit(f"{n} 番目 {cid}", conversation_id=cid)["id"] for n in (2, 3)]
    assert [stack.job(j)["status"] for j in queued] == ["queued", "queued"]
    restarts.restart_redis()
    # Everything the API acknowledged came back from the append-only file.
    wait_for(lambda: stack.job(queued[0])["status"] == "queued", timeout_s=20,
             what="the API to see redis back")
    assert user_texts(stack, cid) == ["覚えててね", f"2 番目 {cid}", f"3 番目 {cid}"]
    assert stack.job(first["id"])["reply"] == first["reply"]
    restarts.start_worker()
    for job_id in queued:
        assert stack.wait_job(job_id, timeout_s=REDELIVERY_S)["status"] == "completed"
    turns = httpx.get(f"{stack.api_url}/api/conversations/{cid}/messages",
                      timeout=5).json()["turns"]
    assert [(t["state"], bool(t["reply"])) for t in turns] == [("completed", True)] * 3
    # Each ran once: the restart did not hand a copy to the new worker as well.
    for n in (2, 3):
        assert len(stack.sim_requests_asking(f"{n} 番目 {cid}")) == 1


def test_ctrl_c_of_the_worker_lets_the_running_prompt_finish(restarts: Restarts,
                                                             cid: str) -> None:
    stack = restarts.stack
    running = stack.submit("ゆっくり話して #sim:pace=2", conversation_id=cid)
    stack.wait_job(running["id"], until=lambda j: bool(j["partial_reply"]))
    worker = stack.procs["worker"]
    # Ctrl+C in a terminal signals the whole foreground group: the parent and its pool.
    os.killpg(worker.process.pid, signal.SIGINT)
    done = stack.wait_job(running["id"])
    assert done["status"] == "completed", done
    assert done["reply"] and done["reply"].startswith(done["partial_reply"])
    assert worker.process.wait(timeout=20) == 0  # a warm shutdown, not a crash
    stack.procs.pop("worker")
    # The conversation goes on with the next worker.
    later = stack.submit(f"あとで {cid}", conversation_id=cid)
    restarts.start_worker()
    assert stack.wait_job(later["id"])["status"] == "completed"


def test_sigterm_of_the_worker_lets_the_running_prompt_finish_then_exits(
        restarts: Restarts, cid: str) -> None:
    """`docker compose stop` and a scale-down send SIGTERM to the worker's main process (PID 1
    of its container) alone: a warm shutdown, the running prompt completes with its whole
    reply, and only then does the process exit. It leaves no worker: it runs last
    (conftest.LAST_IN_MODULE), so that none is started for nothing."""
    stack = restarts.stack
    name = f"term-{cid}"
    message = f"ゆっくり話して #sim:hold={name}"
    running = stack.submit(message, conversation_id=cid)
    stack.wait_job(running["id"], until=lambda j: bool(j["partial_reply"]))
    worker = stack.procs["worker"]
    os.kill(worker.process.pid, signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in worker.log().lower(), timeout_s=5,
             what="the worker's warm shutdown")
    # The signal is taken and the prompt still runs, held by the simulator: the worker waits.
    assert worker.process.poll() is None
    assert stack.job(running["id"])["status"] == "in_progress"
    assert httpx.get(f"{stack.sim_url}/_sim/holds/{name}", timeout=5).json()["state"] == "held"
    httpx.post(f"{stack.sim_url}/_sim/release/{name}", timeout=5)
    done = stack.wait_job(running["id"])
    assert done["status"] == "completed", done
    assert done["reply"] == "".join(reply_chunks(message))
    assert worker.process.wait(timeout=20) == 0  # exited once the job ended, not a crash
    stack.procs.pop("worker")
