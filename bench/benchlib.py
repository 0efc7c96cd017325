"""Helpers of the capacity benchmark: percentiles, process memory, following jobs in Redis,
submitting prompts at once, and the table it writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import psutil
import redis

from core import keys

MB = 1024 * 1024
FINAL = {"completed", "failed", "cancelled", "incomplete"}


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest rank: with few samples p99 is the largest (never an interpolated guess)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- memory ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mem:
    rss: float
    uss: float
    pss: float

    @classmethod
    def of(cls, proc: psutil.Process) -> Mem:
        info = proc.memory_full_info()
        return cls(rss=info.rss / MB, uss=info.uss / MB, pss=info.pss / MB)


@dataclass(frozen=True)
class TreeMem:
    """A process and its children (a worker's main process and its pool)."""

    main: Mem
    children: dict[int, Mem]

    @classmethod
    def of(cls, pid: int) -> TreeMem:
        proc = psutil.Process(pid)
        kids: dict[int, Mem] = {}
        for kid in proc.children(recursive=True):
            try:
                kids[kid.pid] = Mem.of(kid)
            except psutil.Error:  # a child recycled while we looked
                continue
        return cls(main=Mem.of(proc), children=kids)

    @property
    def pss_total(self) -> float:
        return self.main.pss + sum(m.pss for m in self.children.values())

    @property
    def rss_total(self) -> float:
        return self.main.rss + sum(m.rss for m in self.children.values())

    def child_uss(self) -> list[float]:
        return [m.uss for m in self.children.values()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


# -- jobs ------------------------------------------------------------------------------------

@dataclass
class Trace:
    job_id: str
    submitted: float  # client clock, before the POST
    first_text: float | None = None
    final: float | None = None
    record: dict = field(default_factory=dict)  # type: ignore[type-arg]

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_text is None else self.first_text - self.submitted

    @property
    def done_s(self) -> float | None:
        return None if self.final is None else self.final - self.submitted


def follow(client: redis.Redis, traces: list[Trace], *, timeout_s: float,
           interval_s: float = 0.01) -> list[Trace]:
    """Watch the job records (what GET /api/jobs/{id} returns) with one MGET per interval:
    the first time text shows, the time the job is final. No HTTP polling load."""
    deadline = time.monotonic() + timeout_s
    pending = {t.job_id: t for t in traces}
    while pending and time.monotonic() < deadline:
        ids = list(pending)
        raws = client.mget([keys.job(i) for i in ids])
        now = time.monotonic()
        for job_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            record = json.loads(raw)
            trace = pending[job_id]
            if trace.first_text is None and (record.get("partial_reply") or record.get("reply")):
                trace.first_text = now
            if record["status"] in FINAL:
                trace.final, trace.record = now, record
                del pending[job_id]
        time.sleep(interval_s)
    if pending:
        raise TimeoutError(f"{len(pending)} jobs not final after {timeout_s} s")
    return traces


def submit_at_once(api: httpx.Client, prompts: list[tuple[str, str]]) -> list[Trace]:
    """POST every (conversation, text) from its own thread, all at once."""
    def one(prompt: tuple[str, str]) -> Trace:
        submitted = time.monotonic()
        r = api.post("/api/chat", json={"conversation_id": prompt[0], "message": prompt[1]})
        r.raise_for_status()
        return Trace(job_id=r.json()["id"], submitted=submitted)

    with ThreadPoolExecutor(max_workers=max(1, len(prompts))) as pool:
        return list(pool.map(one, prompts))


def wait_idle(client: redis.Redis, *, timeout_s: float = 120.0) -> None:
    """Until no chat job is queued or running."""
    deadline = time.monotonic() + timeout_s
    while client.zcard(keys.active_jobs()) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("jobs still active")
        time.sleep(0.05)


def seconds_between(start_iso: str | None, end_iso: str | None) -> float | None:
    if not start_iso or not end_iso:
        return None
    parse = datetime.fromisoformat
    return (parse(end_iso.replace("Z", "+00:00"))
            - parse(start_iso.replace("Z", "+00:00"))).total_seconds()


# -- the machine and the table ---------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info
                    if line.startswith("model name")), cpu)
    ram = psutil.virtual_memory().total / 1024 ** 3
    return (f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GB RAM, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def busy_processes(limit: int = 4) -> str:
    """The other heavy processes on the box (other engineers' test runs), for the doc."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.splitlines()[1:limit + 1]
    except (OSError, subprocess.SubprocessError):
        return ""
    return ", ".join(" ".join(line.split()) for line in out)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Row:
    section: str
    figure: str
    value: str
    goal: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**not met**", None: ""}[self.met]


def render(rows: list[Row]) -> str:
    lines = ["| | figure | measured | goal | |", "|---|---|---:|---|---|"]
    previous = ""
    for row in rows:
        section = row.section if row.section != previous else ""
        previous = row.section
        lines.append(f"| {section} | {row.figure} | {row.value} | {row.goal} | {row.verdict} |")
    return "\n".join(lines)
