"""A child of `mysisterdb up` exits once `up` is gone, even one that ignores SIGTERM; a
process nobody supervises is left alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psutil
import pytest

from core.orphan import SUPERVISOR_PID_ENV
from tests.procs import ROOT, wait_for

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from core.orphan import exit_when_orphaned
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a child that is slow to stop
    exit_when_orphaned(grace_s=0.5)
    print(os.getpid(), flush=True)
    time.sleep(120)
""")

PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    env = dict(os.environ)
    if sys.argv[3] == "supervised":
        env[sys.argv[2]] = str(os.getpid())
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[4]], env=env)
    time.sleep(120)
""")


@pytest.fixture
def spawn() -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []
    children: list[psutil.Process] = []

    def run(mode: str) -> tuple[subprocess.Popen[str], psutil.Process]:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, CHILD, SUPERVISOR_PID_ENV, mode, str(ROOT)],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        started.append(parent)
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        children.append(child)
        return parent, child

    yield run
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    for child in children:
        if child.is_running():
            child.kill()


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_supervised_child_exits_after_up_is_killed(spawn) -> None:  # type: ignore[no-untyped-def]
    parent, child = spawn("supervised")
    assert not gone(child)
    parent.kill()
    parent.wait(timeout=5)
    wait_for(lambda: gone(child), timeout_s=10, what="the orphaned child to exit")


def test_an_unsupervised_process_outlives_its_parent(spawn) -> None:  # type: ignore[no-untyped-def]
    parent, child = spawn("alone")
    parent.kill()
    parent.wait(timeout=5)
    # Long past the supervised child's grace (0.5 s) and the watch's interval (0.5 s).
    with pytest.raises(TimeoutError):
        wait_for(lambda: gone(child), timeout_s=3, what="nothing")


# A worker's main process and one pool child forked from it, as billiard forks them.
FORKING = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from core.orphan import exit_with_parent
    if os.fork() == 0:
        exit_with_parent()
        print(os.getpid(), flush=True)
        time.sleep(120)
        os._exit(0)
    time.sleep(120)
""")


def wake_ups(proc: psutil.Process) -> int:
    """Voluntary context switches of all of the process's threads (psutil counts only its
    main thread's)."""
    total = 0
    for task in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{task}/status") as status:
            total += sum(int(line.split()[1]) for line in status
                         if line.startswith("voluntary_ctxt_switches"))
    return total


def test_a_pool_child_leaves_with_its_main_process_and_is_never_woken_before() -> None:
    main = subprocess.Popen([sys.executable, "-c", FORKING, str(ROOT)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert main.stdout is not None
        child = psutil.Process(int(main.stdout.readline()))
        before = wake_ups(child)
        # Idle for 1.5 s: a watch polling every 0.2 s wakes 7 times; a pidfd never.
        with pytest.raises(TimeoutError):
            wait_for(lambda: gone(child), timeout_s=1.5, what="nothing")
        assert wake_ups(child) - before <= 1
        main.kill()
        main.wait(timeout=5)
        wait_for(lambda: gone(child), timeout_s=5, what="the pool child to exit")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the child too, if a check failed
            os.killpg(main.pid, signal.SIGKILL)
        main.wait(timeout=5)
