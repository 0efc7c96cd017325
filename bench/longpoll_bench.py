"""Following jobs without hammering the server: /api/health latency while 200 clients follow
a job, and how soon a long-poll answers after the job changes.

Starts its own Redis and stack (API, worker, simulator). The followed job is parked: stored
through the real lifecycle but never dispatched, so it changes only when the bench writes
to it. The 200 clients run in another process (a load generator, asyncio + httpx), while
this process times /api/health one request at a time. Three phases, in the same run:

    idle       nobody follows the job (the baseline; measured first and again last)
    long-poll  200 clients wait on ?wait=30&after=<sequence> (asking again when answered)
    polling    200 clients GET the job every 300 ms (what the chat page did before)

Then, with 200 long-polls waiting, the job is changed (claim / show_text) REPEAT times, and
the time from the write to the answer of a long-poll that waited for it is measured.
Prints p50/p99 of health per phase, the ratio to idle, Redis commands per second, and the
change-to-answer latency.

    .venv/bin/python bench/longpoll_bench.py          # CLIENTS=200 PHASE_S=8 REPEAT=30, ~1 min
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import keys  # noqa: E402
from core.history import history_store
from core.lifecycle import Lifecycle, Limits, Outcome  # noqa: E402
from mysisterdb.redis_server import start_redis  # noqa: E402
from tests.conftest import start_stack  # noqa: E402

CLIENTS = int(os.environ.get("CLIENTS", "200"))
PHASE_S = float(os.environ.get("PHASE_S", "8"))
REPEAT = int(os.environ.get("REPEAT", "30"))
POLL_EVERY_S = 0.3


# -- the load generator (another process) -----------------------------------------------------


async def follow(api: str, job_id: str, mode: str, stop_at: float) -> int:
    requests = 0
    limits = httpx.Limits(max_connections=CLIENTS + 10)
    async with httpx.AsyncClient(base_url=api, timeout=60, limits=limits) as client:
        async def one() -> None:
            nonlocal requests
            after = 0
            while time.monotonic() < stop_at:
                if mode == "polling":
                    await client.get(f"/api/jobs/{job_id}")
                    await asyncio.sleep(POLL_EVERY_S)
                else:
                    wait = max(0.1, min(30.0, stop_at - time.monotonic()))
                    r = await client.get(f"/api/jobs/{job_id}",
                                         params={"wait": wait, "after": after})
                    after = r.json()["sequence"]
                requests += 1

        await asyncio.gather(*(one() for _ in range(CLIENTS)))
    return requests


def load(api: str, job_id: str, mode: str, seconds: float, served: object = None) -> None:
    count = asyncio.run(follow(api, job_id, mode, time.monotonic() + seconds))
    if served is not None:
        served.value = count  # type: ignore[attr-defined]


# -- measurements (this process) ---------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def health_times(api: str, seconds: float) -> list[float]:
    times: list[float] = []
    ends = time.monotonic() + seconds
    with httpx.Client(base_url=api, timeout=10) as client:
        while time.monotonic() < ends:
            started = time.monotonic()
            client.get("/api/health")
            times.append((time.monotonic() - started) * 1000)
            time.sleep(0.02)
    return times


def commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def phase(api: str, client: redis.Redis, job_id: str,
          mode: str) -> tuple[list[float], float, float]:
    """Health times (ms), Redis commands/s, and job requests/s answered to the followers."""
    ctx = multiprocessing.get_context("spawn")
    served, proc = ctx.Value("i", 0), None
    if mode != "idle":
        proc = ctx.Process(target=load, args=(api, job_id, mode, PHASE_S + 2, served))
        proc.start()
        time.sleep(1.5)  # clients connected and following
    before, started = commands(client), time.monotonic()
    times = health_times(api, PHASE_S - 1)
    rate = (commands(client) - before) / (time.monotonic() - started)
    if proc is not None:
        proc.join(timeout=PHASE_S + 40)
    return times, rate, served.value / (PHASE_S + 2)


def change_latency(api: str, lifecycle: Lifecycle, job_id: str) -> list[float]:
    """Write to the job while a long-poll waits for it; ms from the write to the answer."""
    latencies: list[float] = []
    lifecycle.claim(job_id)
    with httpx.Client(base_url=api, timeout=40) as client:
        for i in range(REPEAT):
            seq = client.get(f"/api/jobs/{job_id}").json()["sequence"]
            wrote: list[float] = []

            def write(n: int, at: list[float]) -> None:
                time.sleep(0.2)
                at.append(time.monotonic())
                lifecycle.show_text(job_id, "あ" * (n + 1))

            writer = threading.Thread(target=write, args=(i, wrote))
            writer.start()
            client.get(f"/api/jobs/{job_id}", params={"wait": 20, "after": seq})
            answered = time.monotonic()
            writer.join()
            latencies.append((answered - wrote[0]) * 1000)
    return latencies


def main() -> None:
    server = start_redis()
    url = f"redis://{server.host}:{server.port}/0"
    stack = start_stack(redis_url=url, log_dir=Path(tempfile.mkdtemp(prefix="longpoll-bench-")),
                        extra={"MYSISTERDB_TASK_TIME_LIMIT": "120",
                               "MYSISTERDB_TASK_SOFT_TIME_LIMIT": "100"})
    client = redis.Redis.from_url(url, socket_timeout=5)
    lifecycle = Lifecycle(client=client, history=history_store(client),
                          limits=Limits(hard_limit_s=120, queue_timeout_s=600), broker=None)
    job = lifecycle.submit(conversation_id="bench", text="待っててね", tokens=3).job
    client.zrem(keys.outbox(), job.id)
    try:
        print(f"{CLIENTS} clients follow one job; /api/health timed one request at a time, "
              f"{PHASE_S:g} s per phase\n")
        print(f"{'phase':<10} {'health p50':>11} {'p99':>9} {'n':>5} {'x idle p50':>11} "
              f"{'x idle p99':>11} {'redis cmd/s':>12} {'job req/s':>10}")
        idle: tuple[float, float] | None = None
        for mode in ("idle", "long-poll", "polling", "idle"):
            times, rate, served = phase(stack.api_url, client, job.id, mode)
            p50, p99 = statistics.median(times), pct(times, 0.99)
            idle = idle or (p50, p99)
            print(f"{mode:<10} {p50:>9.1f}ms {p99:>7.1f}ms {len(times):>5} {p50 / idle[0]:>11.2f} "
                  f"{p99 / idle[1]:>11.2f} {rate:>12.0f} {served:>10.0f}")
        proc = multiprocessing.get_context("spawn").Process(
            target=load, args=(stack.api_url, job.id, "long-poll", 60))
        proc.start()
        time.sleep(1.5)
        latencies = change_latency(stack.api_url, lifecycle, job.id)
        print(f"\nlong-poll answer after a change ({REPEAT} changes, {CLIENTS} other waiters): "
              f"p50 {statistics.median(latencies):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, "
              f"max {max(latencies):.1f} ms")
        lifecycle.end(job.id, Outcome.cancelled())  # wakes the generator's waiters: they stop
        proc.terminate()
        proc.join(timeout=10)
    finally:
        stack.stop()
        server.stop()


if __name__ == "__main__":
    main()
