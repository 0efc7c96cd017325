"""The worker's liveness file (workers/alive.py), which compose's healthcheck reads: fresh while
the worker's event loop turns with its broker connection, stale when the loop is stopped,
stale or gone when the broker is lost (as the healthcheck reads it: older than a bound, or
missing), fresh again when the broker is back, gone when the worker stops."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from mysisterdb.redis_server import RedisServer, free_port, start_redis
from tests.conftest import stack_env
from tests.procs import Proc, mysisterdb, start, wait_for

INTERVAL_S = 0.2
STALE_WINDOW_S = 10 * INTERVAL_S  # ten touches missed: not a scheduling hiccup


@dataclass
class Watched:
    worker: Proc
    server: RedisServer
    alive: Path

    def mtime(self) -> float:
        return self.alive.stat().st_mtime

    def touched_after(self, then: float) -> bool:
        return self.alive.exists() and self.mtime() > then

    def fresh(self) -> bool:
        """What the healthcheck asks, with this test's interval: there and recent."""
        try:
            return time.time() - self.mtime() < STALE_WINDOW_S
        except FileNotFoundError:
            return False


def start_worker(port: int, log_dir: Path, alive: Path) -> Proc:
    env = stack_env(redis_url=f"redis://127.0.0.1:{port}/0", api_port=free_port(),
                    sim_port=free_port(), log_dir=log_dir,
                    extra={"MYSISTERDB_WORKER_ALIVE_FILE": str(alive),
                           "MYSISTERDB_WORKER_ALIVE_INTERVAL_S": str(INTERVAL_S)})
    return start("worker", mysisterdb("worker", "--role", "chat"), env=env, log_dir=log_dir)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    server = start_redis()  # its own: this test kills it
    alive = tmp_path / "worker.alive"
    worker = start_worker(server.port, tmp_path, alive)
    watched = Watched(worker=worker, server=server, alive=alive)
    try:
        wait_for(alive.exists, timeout_s=30, what="the liveness file")
        yield watched
    finally:
        worker.stop()
        watched.server.stop()  # the test starts a new one: that one is stopped here


def test_the_file_lives_with_the_loop_and_the_broker_and_goes_with_the_worker(
        watched: Watched) -> None:
    """One worker through every state (a worker start is the costly part of this test)."""
    first = watched.mtime()
    wait_for(lambda: watched.touched_after(first), timeout_s=10, what="a second touch")

    main = psutil.Process(watched.worker.process.pid)
    main.suspend()  # the worker stands still, as in a hang
    try:
        frozen = watched.mtime()
        deadline = time.monotonic() + STALE_WINDOW_S
        while time.monotonic() < deadline:
            assert watched.mtime() == frozen, "touched while the worker was stopped"
            time.sleep(INTERVAL_S)
    finally:
        main.resume()
    wait_for(lambda: watched.touched_after(frozen), timeout_s=10, what="touches again")

    port = watched.server.port
    watched.server.stop()
    # Removed when Celery stops the consumer's steps for the lost connection; left to age
    # when the loss blocks the loop in a reconnect first (seen under CI's load): either way
    # the healthcheck says unhealthy.
    wait_for(lambda: not watched.fresh(), timeout_s=30,
             what="the file gone or stale once the broker connection is lost")
    watched.server = start_redis(port=port)
    wait_for(watched.fresh, timeout_s=60, what="the file fresh again with the broker")

    watched.worker.process.send_signal(signal.SIGTERM)
    assert watched.worker.process.wait(timeout=30) == 0
    assert not watched.alive.exists()
