"""A child of `mysisterdb up` exits once `up` is gone, even one that ignores SIGTERM; a
process nobody supervises is left alone."""

from __future__ import annotations

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
