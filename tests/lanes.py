"""`make test`: the suite in four lanes at once, so that a 2-core machine is kept busy.

- **docker**: tests/compose, one module after another (three compose projects building and
  starting at once took 80-98 s each to come up here, against 11-20 s alone). The longest
  chain, about 4 minutes alone.
- **browser**: tests/ui and the long loopback-only modules of BESIDE_THE_BROWSER, inside a
  network namespace of its own when the machine allows one
  (root, as CI runs, or unprivileged user namespaces). Chromium fails every request in flight
  with ERR_NETWORK_CHANGED when an interface appears anywhere on the machine, and Docker adds
  one for each container the compose tests start (seen here: the page tests failed while
  tests/compose ran beside them). In a namespace of its own Chromium sees one interface, its
  loopback, which is all the page's stack needs. Where no namespace can be made, the browser
  lane waits for the docker lane to end.
- **waits**: the modules of WAITING, one after another: their tests wait out timeouts and
  time limits (a hung Gemini call cut at its deadline, a task killed at its hard limit) and
  spend little CPU meanwhile, so they cost the busy box little beside the others, and in the
  rest lane they held one of its two workers for minutes. Then the modules of
  BESIDE_THE_WAITS: once the compose tests shared one project and test_up shared its `up`s,
  the rest lane was the run's longest chain (422 s against waits 138 s, browser 327 s).
- **rest**: every other test over pytest-xdist workers (`--dist loadfile`: a module and the
  stack it starts stay in one process; each worker has its own redis-server).

With `--checks` (`make test` passes it) two more lanes run beside the tests instead of before
them: **lint** (`make lint`: ruff and mypy, ~17 s of CPU) and **image** (`make image`: the
compose tests' image, ~40 s from an empty cache, most of it waiting on the package index), and
the docker lane starts once the image is built. Before, `make test` ran both first, ~60 s in
which the box was half idle.

Each lane writes its log under test-artifacts/lanes/; all logs are printed when the lanes
end. Arguments go to every lane's pytest (`make test ARGS=-x`); `MYSISTERDB_TEST_WORKERS`
sets the rest lane's worker count (2).

    python -m tests.lanes [--checks] [pytest arguments]
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lane_cpu import LaneCpu

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "test-artifacts" / "lanes"
BROWSER_TESTS, DOCKER_TESTS = "tests/ui", "tests/compose"
# Long modules that need nothing but loopback run in the browser lane too: its page tests end
# minutes before the other lanes (181-241 s against 390-470 s in the runs of 2026-12-07), and
# the rest lane's two workers were the run's longest chain.
BESIDE_THE_BROWSER = ("tests/test_up.py", "tests/workers/test_restarts.py")
# Wall time far above CPU time (run of 2026-12-07 23:49, wall / CPU): 35.4 / 4.9 s,
# 25.2 / 1.2 s, 21.5 / 0.8 s, 20.1 / 1.3 s.
WAITING = ("tests/workers/test_failures.py", "tests/workers/test_llm.py",
           "tests/core/test_sentinels_down.py", "tests/api/test_incidents_metrics.py")
# The rest lane's two longest modules (run of 2026-12-08 03:35, wall / CPU): 107 / 36 s and
# 72 / 18 s.
BESIDE_THE_WAITS = ("tests/api/test_contract.py", "tests/test_install.py")
WORKERS_SETTING = "MYSISTERDB_TEST_WORKERS"
DEFAULT_WORKERS = 2
IN_NETNS = "--in-netns"
CHECKS = "--checks"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PROGRESS_EVERY_S = 60.0


@dataclass
class Lane:
    name: str
    argv: list[str]
    log: Path
    after: Lane | None = None  # started once that lane has ended
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seconds: float = 0.0

    def start(self, cpu: LaneCpu) -> None:
        self.started = time.monotonic()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT,
                                            preexec_fn=cpu.joiner(self.name))

    def poll(self) -> int | None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None and not self.seconds:
            self.seconds = time.monotonic() - self.started
        return code

    def summary(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"


def pytest_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def netns_prefix() -> list[str] | None:
    """The command that runs the browser lane in a new network namespace, or None where this
    machine cannot make one (no util-linux `unshare`, no privilege for it)."""
    prefix = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def loopback_up() -> None:
    """A new network namespace starts with its loopback down; `ip` may not be installed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def lanes(args: list[str], *, netns: list[str] | None, checks: bool = False) -> list[Lane]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    workers = os.environ.get(WORKERS_SETTING, str(DEFAULT_WORKERS))
    image = Lane("image", ["make", "--no-print-directory", "image"], LOG_DIR / "image.log")
    docker = Lane("docker", pytest_argv(DOCKER_TESTS, *args), LOG_DIR / "docker.log",
                  after=image if checks else None)
    browser = pytest_argv(BROWSER_TESTS, *BESIDE_THE_BROWSER, *args)
    if netns is not None:
        browser = [*netns, sys.executable, "-m", "tests.lanes", IN_NETNS, *browser]
    ignored = [a for path in (BROWSER_TESTS, DOCKER_TESTS, *BESIDE_THE_BROWSER, *WAITING,
                              *BESIDE_THE_WAITS)
               for a in ("--ignore", path)]
    rest = pytest_argv(*ignored, "-n", workers, "--dist", "loadfile", *args)
    tests = [docker,
             Lane("browser", browser, LOG_DIR / "browser.log",
                  after=None if netns is not None else docker),
             Lane("waits", pytest_argv(*WAITING, *BESIDE_THE_WAITS, *args), LOG_DIR / "waits.log"),
             Lane("rest", rest, LOG_DIR / "rest.log")]
    if not checks:
        return tests
    return [Lane("lint", ["make", "--no-print-directory", "lint"], LOG_DIR / "lint.log"),
            image, *tests]


def run(args: list[str]) -> int:
    checks = args[:1] == [CHECKS]
    args = args[1:] if checks else args
    netns = netns_prefix()
    if netns is None:
        print("tests/lanes: no network namespace can be made here (needs root or unprivileged "
              "user namespaces): the browser tests wait for the compose tests to end",
              flush=True)
    all_lanes = lanes(args, netns=netns, checks=checks)
    cpu = LaneCpu()
    began = time.monotonic()
    last_report = began
    # Every lane polled each turn (a generator under any() stopped at the first running
    # lane, so a later lane's end was noticed only at the next progress line).
    while any([lane.process is None or lane.poll() is None for lane in all_lanes]):
        for lane in all_lanes:
            if lane.process is None and (lane.after is None or lane.after.poll() is not None):
                lane.start(cpu)
                print(f"tests/lanes: {lane.name} started, log in "
                      f"{lane.log.relative_to(ROOT)}", flush=True)
        time.sleep(0.5)
        if time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            running = ", ".join(lane.name for lane in all_lanes
                                if lane.process is not None and lane.poll() is None)
            print(f"tests/lanes: {last_report - began:.0f} s, running: {running}", flush=True)
    for lane in all_lanes:
        print(f"\n{'=' * 30} lane {lane.name} ({lane.seconds:.0f} s) {'=' * 30}", flush=True)
        sys.stdout.write(lane.log.read_text(errors="replace"))
    wall_s = time.monotonic() - began
    print(f"\ntests/lanes: {wall_s:.0f} s in all", flush=True)
    if (spent := cpu.report(wall_s)) is not None:
        print(f"tests/lanes: {spent}", flush=True)
    cpu.close()
    for lane in all_lanes:
        code = lane.process.returncode if lane.process else None
        print(f"  {lane.name}: exit {code} after {lane.seconds:.0f} s: {lane.summary()}",
              flush=True)
    # 5: no test selected, which a lane may see when the arguments pick tests of another one.
    passed = (0, 5) if args else (0,)
    return 0 if all(lane.process and lane.process.returncode in passed
                    for lane in all_lanes) else 1


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == [IN_NETNS]:
        loopback_up()
        os.execvp(args[1], args[1:])
    try:
        return run(args)
    except KeyboardInterrupt:  # the lanes got the same Ctrl+C and stop on their own
        return 130


if __name__ == "__main__":
    sys.exit(main())
