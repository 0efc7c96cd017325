"""How fast the stack gets out of trouble: time for a job to reach its final state, for a
normal prompt (the baseline) and for each failure the old server froze on, plus /api/health
latency while a hang is in progress.

Starts its own redis-server, simulator, worker (prefork, 2 processes) and API with the
limits given below (the test suite's short ones by default), so the figures are comparable
run to run. Prints medians over REPEAT runs and the ratio to the baseline.

    .venv/bin/python bench/failure_bench.py            # REPEAT=3
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mysisterdb.redis_server import start_redis  # noqa: E402
from tests.conftest import TEST_LIMITS, start_stack  # noqa: E402
from tests.procs import Stack  # noqa: E402

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
        finally:
            stack.stop()
            server.stop()


def run(stack: Stack) -> None:
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


if __name__ == "__main__":
    main()
