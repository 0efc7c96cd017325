"""Where the suite's minutes go, by package: every CI log ends with the seconds each tests/
package took (setup, call and teardown of its tests, fixtures included) and the CPU seconds
spent meanwhile by pytest and the processes it started and reaped (stacks, redis-servers,
pip). Docker containers run under the daemon and are not in the CPU column; a process
reaped after the last test (Chromium's driver) is in neither package."""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Iterator

import pytest

_seconds: defaultdict[str, float] = defaultdict(float)
_cpu: defaultdict[str, float] = defaultdict(float)


def package_of(nodeid: str) -> str:
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def cpu_seconds() -> float:
    used = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        used += usage.ru_utime + usage.ru_stime
    return used


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    before = cpu_seconds()
    try:
        return (yield)
    finally:
        _cpu[package_of(item.nodeid)] += cpu_seconds() - before


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[package_of(report.nodeid)] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("seconds by package")
    terminalreporter.write_line(f"{'wall':>10} {'CPU':>9}  package")
    for package, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s {_cpu[package]:7.1f} s  {package}")
    terminalreporter.write_line(f"{sum(_seconds.values()):8.1f} s {sum(_cpu.values()):7.1f} s"
                                "  in all")
