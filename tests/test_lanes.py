"""`make test`'s browser lane (tests/lanes.py) runs where Docker's interfaces cannot reach it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import lanes
from tests.lane_cpu import LaneCpu
from tests.procs import ROOT

# Lists the interfaces it sees, then talks to itself over loopback, as the page's stack does.
PROBE = ("import socket\n"
         "print(sorted(name for _, name in socket.if_nameindex()))\n"
         "server = socket.create_server(('127.0.0.1', 0))\n"
         "socket.create_connection(server.getsockname(), timeout=2).sendall(b'hello')\n"
         "print(server.accept()[0].recv(5).decode())\n")


def test_the_browser_lane_sees_its_loopback_and_nothing_else() -> None:
    prefix = lanes.netns_prefix()
    if prefix is None:
        reason = "no network namespace can be made here: the browser lane runs alone instead"
        if os.environ.get("MYSISTERDB_TEST_REQUIRE_CHROMIUM") == "1":  # CI: root, must isolate
            pytest.fail(reason)
        pytest.skip(reason)
    probe = subprocess.run([*prefix, sys.executable, "-m", "tests.lanes", lanes.IN_NETNS,
                            sys.executable, "-c", PROBE],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["['lo']", "hello"]


def test_make_test_s_checks_run_as_lanes_and_the_docker_lane_waits_for_the_image() -> None:
    with_checks = {lane.name: lane for lane in lanes.lanes([], netns=[], checks=True)}
    assert list(with_checks) == ["lint", "image", "docker", "browser", "waits", "rest"]
    assert with_checks["lint"].argv[-1] == "lint" and with_checks["image"].argv[-1] == "image"
    assert with_checks["docker"].after is with_checks["image"]
    assert all(with_checks[name].after is None for name in ("lint", "image", "browser", "waits",
                                                             "rest"))
    alone = {lane.name: lane for lane in lanes.lanes([], netns=[])}
    assert list(alone) == ["docker", "browser", "waits", "rest"]
    assert alone["docker"].after is None


def test_a_lane_s_cpu_counts_the_processes_it_starts() -> None:
    cpu = LaneCpu()
    join = cpu.joiner("probe")
    if join is None:
        pytest.skip("no cgroup can be made here (root and cgroup v1 cpuacct needed)")
    try:
        # The lane's process spends nothing itself; the child it starts spends the CPU.
        burn = "x = 0\nfor i in range(4_000_000): x += i"
        subprocess.run([sys.executable, "-c", "import subprocess, sys; "
                        f"subprocess.run([sys.executable, '-c', {burn!r}], check=True)"],
                       preexec_fn=join, check=True, timeout=60)
        assert cpu.lanes_s()["probe"] >= 0.1, cpu.lanes_s()
        assert "probe " in (cpu.report(wall_s=1.0) or "")
    finally:
        cpu.close()
