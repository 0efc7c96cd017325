"""Where the suite's minutes go, by package: every CI log ends with the seconds each tests/
package took (setup, call and teardown of its tests, fixtures included) and the CPU seconds
spent meanwhile by pytest and the processes it started and reaped (stacks, redis-servers,
pip). Under pytest-xdist both are summed over the workers (the seconds then add up to more
than the wall time). Docker containers run under the daemon and are not in the CPU column; a
process reaped after the last test (Chromium's driver) is in neither package."""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Iterator

import pytest

_seconds: defaultdict[str, float] = defaultdict(float)
_cpu: defaultdict[str, float] = defaultdict(float)
_module_cpu: defaultdict[str, float] = defaultdict(float)
_module_seconds: defaultdict[str, float] = defaultdict(float)
MODULES_SHOWN = 15


def package_of(nodeid: str) -> str:
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def cpu_seconds() -> float:
    used = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        used += usage.ru_utime + usage.ru_stime
    return used


_phase_began = pytest.StashKey[float]()
CPU_PROPERTY = "cpu_s_"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    item.stash[_phase_began] = cpu_seconds()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[pytest.TestReport]:
    """Each phase's CPU travels in its report: under pytest-xdist the reports are all the
    controller sees of the workers."""
    report: pytest.TestReport = yield
    now = cpu_seconds()
    report.user_properties.append((CPU_PROPERTY + call.when, now - item.stash[_phase_began]))
    item.stash[_phase_began] = now
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    package = package_of(report.nodeid)
    _seconds[package] += report.duration
    cpu = dict(report.user_properties).get(CPU_PROPERTY + report.when, 0.0)
    _cpu[package] += cpu
    module = report.nodeid.split("::", 1)[0]
    _module_cpu[module] += cpu
    _module_seconds[module] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("seconds by package")
    terminalreporter.write_line(f"{'wall':>10} {'CPU':>9}  package")
    for package, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s {_cpu[package]:7.1f} s  {package}")
    terminalreporter.write_line(f"{sum(_seconds.values()):8.1f} s {sum(_cpu.values()):7.1f} s"
                                "  in all")
    # By wall time: under xdist the longest module bounds how early its worker can finish.
    terminalreporter.section(f"the {MODULES_SHOWN} longest modules")
    terminalreporter.write_line(f"{'wall':>10} {'CPU':>9}  module")
    for module, seconds in sorted(_module_seconds.items(),
                                  key=lambda kv: -kv[1])[:MODULES_SHOWN]:
        terminalreporter.write_line(f"{seconds:8.1f} s {_module_cpu[module]:7.1f} s  {module}")
