"""Where the suite's CPU goes, for tests/lanes.py: each lane with everything it starts (its
stacks, Chromium, the CLI commands its tests run), the containers of the compose tests, and
the whole box, read from cgroup v1's cpuacct controller.

The suite is CPU-bound on two cores: its wall time is about its CPU seconds over two, so this
is the figure to cut. A lane's own cgroup is made where the machine allows it (root, as CI
runs, with /sys/fs/cgroup/cpuacct mounted); elsewhere nothing is counted and nothing printed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
DOCKER_GROUP = CPUACCT / "docker"  # Docker's cgroupfs driver puts every container under it


def _usage_s(group: Path) -> float | None:
    try:
        return int((group / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None


class LaneCpu:
    """A cgroup per lane, and the box's and Docker's counters at the start."""

    def __init__(self) -> None:
        self.box_at_start = _usage_s(CPUACCT)
        self.docker_at_start = _usage_s(DOCKER_GROUP)
        self.groups: dict[str, Path] = {}

    def joiner(self, lane: str) -> Callable[[], None] | None:
        """A preexec_fn putting the lane's process in a fresh cgroup of its own before it
        runs, so that all it starts is counted; None where no cgroup can be made."""
        group = CPUACCT / f"mysisterdb-lane-{lane}"
        try:
            if group.exists():
                group.rmdir()  # an earlier run's: empty once its processes ended
            group.mkdir()
        except OSError:
            return None
        self.groups[lane] = group
        return lambda: (group / "tasks").write_text(str(os.getpid()))

    def lanes_s(self) -> dict[str, float]:
        """CPU seconds of each lane so far, everything it started included."""
        return {lane: _usage_s(group) or 0.0 for lane, group in self.groups.items()}

    def report(self, wall_s: float) -> str | None:
        if self.box_at_start is None or not self.groups:
            return None
        parts = [f"{lane} {seconds:.0f}" for lane, seconds in self.lanes_s().items()]
        docker = _usage_s(DOCKER_GROUP)
        if docker is not None and self.docker_at_start is not None:
            parts.append(f"containers {docker - self.docker_at_start:.0f}")
        box = (_usage_s(CPUACCT) or 0) - self.box_at_start
        cores = os.cpu_count() or 1
        return (f"CPU seconds: {', '.join(parts)}; the whole box {box:.0f} of the "
                f"{wall_s * cores:.0f} its {cores} cores had ({box / (wall_s * cores):.0%})")

    def close(self) -> None:
        for group in self.groups.values():
            with contextlib.suppress(OSError):  # a process of the lane still alive in it
                group.rmdir()
