"""How fast the stack gets out of trouble: time for a job to reach its final state, for a
normal prompt (the baseline) and for each failure the old server froze on, plus /api/health
latency while a hang is in progress; then the API's answers while Redis is frozen (SIGSTOP:
it accepts connections and never answers), against the same requests with Redis well: the
503-within-2-s and health-within-1-s promises, measured on the first requests after the
freeze (the slowest case: the API has not noticed yet).

Starts its own redis-server, simulator, worker (prefork, 2 processes) and API with the
limits given below (the test suite's short ones by default), so the figures are comparable
run to run. Prints medians over REPEAT runs and the ratio to the baseline.

    .venv/bin/python bench/failure_bench.py            # REPEAT=3
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import Settings  # noqa: E402
from mysisterdb.redis_server import RedisServer, start_redis  # noqa: E402
from tests.conftest import TEST_LIMITS, start_stack  # noqa: E402
from tests.procs import Stack, wait_for  # noqa: E402

REPEAT = int(os.environ.get("REPEAT", "3"))
CASES = [("normal reply", "こんにちは"), ("#sim:hang", "#sim:hang"),
         ("#sim:stall", "#sim:stall"), ("#sim:error=500", "#sim:error=500"),
         ("#worker:stuck (hard limit)", "#worker:stuck")]


def time_to_final(stack: Stack, text: str, n: int) -> tuple[float, str, list[float]]:
    started = time.monotonic()
    job = stack.submit(text, conversation_id=f"bench-{n}-{int(started * 1000)}")
    health: list[float] = []
    while True:
        t = time.monotonic()
        httpx.get(f"{stack.api_url}/api/health", timeout=5)
        health.append(time.monotonic() - t)
        current = stack.job(job["id"])
        if current["status"] not in ("queued", "in_progress"):
            code = (current.get("error") or {}).get("code") or ""
            return time.monotonic() - started, f"{current['status']} {code}".strip(), health
        time.sleep(0.05)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis()
        stack = start_stack(redis_url=server.url, log_dir=Path(tmp))
        try:
            run(stack)
            frozen_redis(stack, server)
        finally:
            stack.stop()
            server.stop()


def run(stack: Stack) -> None:
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"limits: hard {TEST_LIMITS['MYSISTERDB_TASK_TIME_LIMIT']} s, soft "
          f"{TEST_LIMITS['MYSISTERDB_TASK_SOFT_TIME_LIMIT']} s, Gemini timeout "
          f"{TEST_LIMITS['MYSISTERDB_GEMINI_TIMEOUT']} s x (1 + "
          f"{TEST_LIMITS['MYSISTERDB_GEMINI_RETRIES']} retry); median of {REPEAT}")
    baseline = None
    print(f"{'case':<28}{'ends as':<26}{'median s':>10}{'x baseline':>12}{'health max ms':>15}")
    for name, text in CASES:
        times, outcome, worst = [], "", 0.0
        for n in range(REPEAT):
            elapsed, outcome, health = time_to_final(stack, text, n)
            times.append(elapsed)
            worst = max(worst, max(health))
        median = statistics.median(times)
        baseline = baseline or median
        print(f"{name:<28}{outcome:<26}{median:>10.2f}{median / baseline:>12.1f}"
              f"{worst * 1000:>15.0f}")


# (request, its promised bound in seconds) while Redis does not answer.
FROZEN_REQUESTS = [("POST /api/chat", 2.0), ("GET /api/jobs/{id}", 2.0),
                   ("GET /api/health", 1.0)]


def frozen_requests(stack: Stack, job_id: str) -> list[tuple[float, int]]:
    """The three requests at once; each one's (seconds, status)."""
    def one(what: str) -> tuple[float, int]:
        started = time.monotonic()
        if what.startswith("POST"):
            r = httpx.post(f"{stack.api_url}/api/chat", timeout=30,
                           json={"message": "凍ってる？", "conversation_id": "bench-frozen"})
        elif "jobs" in what:
            r = httpx.get(f"{stack.api_url}/api/jobs/{job_id}", timeout=30)
        else:
            r = httpx.get(f"{stack.api_url}/api/health", timeout=30)
        return time.monotonic() - started, r.status_code

    with ThreadPoolExecutor(max_workers=len(FROZEN_REQUESTS)) as pool:
        return list(pool.map(one, [what for what, _ in FROZEN_REQUESTS]))


def redis_timeout(stack: Stack) -> str:
    default = Settings.model_fields["redis_timeout_s"].default
    set_to = stack.env.get("MYSISTERDB_REDIS_TIMEOUT_S")
    return f"{set_to} s" if set_to else f"{default:g} s (the default)"


def frozen_redis(stack: Stack, server: RedisServer) -> None:
    job_id = stack.submit("こんにちは", conversation_id="bench-frozen-job")["id"]
    stack.wait_job(job_id)
    well: list[list[tuple[float, int]]] = []
    frozen: list[list[tuple[float, int]]] = []
    for _ in range(REPEAT):
        well.append(frozen_requests(stack, job_id))
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            frozen.append(frozen_requests(stack, job_id))
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        wait_for(lambda: httpx.get(f"{stack.api_url}/api/health", timeout=5).status_code == 200,
                 timeout_s=30, what="the API to see redis back")
    print(f"\nRedis frozen (SIGSTOP), first requests after the freeze, all three at once; "
          f"MYSISTERDB_REDIS_TIMEOUT_S {redis_timeout(stack)}; "
          f"median of {REPEAT}")
    print(f"{'request':<22}{'redis well ms':>14}{'frozen s':>10}{'frozen max s':>14}"
          f"{'x well':>8}{'bound s':>9}  statuses")
    for i, (what, bound) in enumerate(FROZEN_REQUESTS):
        base = statistics.median(run[i][0] for run in well)
        times = [run[i][0] for run in frozen]
        statuses = sorted({run[i][1] for run in frozen})
        median = statistics.median(times)
        print(f"{what:<22}{base * 1000:>14.0f}{median:>10.2f}{max(times):>14.2f}"
              f"{median / base:>8.0f}{bound:>9.1f}  {statuses}")


if __name__ == "__main__":
    main()
