"""Resource monitoring: every process logs its memory and CPU, and warns above a threshold.

The runbook's log_resource_usage, on a timer thread. The worker's main process also
reports its pool children, whose memory is what grows when a prompt misbehaves.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psutil

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class Usage:
    rss_mb: float
    cpu_percent: float
    children: int
    children_rss_mb: float


def sample(proc: psutil.Process) -> Usage:
    kids = proc.children(recursive=True)
    kids_rss = 0
    for kid in kids:
        try:
            kids_rss += kid.memory_info().rss
        except psutil.Error:  # a child may exit between listing and reading
            continue
    return Usage(rss_mb=proc.memory_info().rss / MB, cpu_percent=proc.cpu_percent(None),
                 children=len(kids), children_rss_mb=kids_rss / MB)


def log_usage(usage: Usage, *, label: str, warn_mb: float) -> None:
    logger.info("resources %s: rss %.1f MB, cpu %.1f%%, %d children (%.1f MB)", label,
                usage.rss_mb, usage.cpu_percent, usage.children, usage.children_rss_mb)
    if usage.rss_mb > warn_mb:
        logger.warning("memory high in %s: rss %.1f MB > %d MB", label, usage.rss_mb, warn_mb)
    if usage.children and usage.children_rss_mb / usage.children > warn_mb:
        logger.warning("memory high in %s children: %.1f MB average > %d MB", label,
                       usage.children_rss_mb / usage.children, warn_mb)


class ResourceMonitor(threading.Thread):
    """A daemon thread logging this process's usage every interval_s seconds."""

    def __init__(self, *, label: str, interval_s: float, warn_mb: float) -> None:
        super().__init__(name=f"resources-{label}", daemon=True)
        self.label, self.interval_s, self.warn_mb = label, interval_s, warn_mb
        self.stopped = threading.Event()
        self.proc = psutil.Process()

    def run(self) -> None:
        self.proc.cpu_percent(None)  # the first reading of cpu_percent is always 0
        while not self.stopped.wait(self.interval_s):
            try:
                log_usage(sample(self.proc), label=self.label, warn_mb=self.warn_mb)
            except Exception:  # monitoring must never take its process down
                logger.exception("resource sampling failed")

    def stop(self) -> None:
        self.stopped.set()
