"""Typed-ahead messages: five prompts sent at once into one conversation, against one prompt.

Starts its own redis-server, simulator, worker (prefork, 2 processes) and API (the test
suite's limits). Each prompt asks the simulator to answer after SLEEP_S, so one job's time
is dominated by a known reply time, as with a real Gemini. Measures, REPEAT times, the time
from the first submit to the last completion of five typed-ahead prompts, and the time of a
single prompt; prints medians, the ratio five/single (ideal 5.0) and the overhead beyond five
single jobs. Also counts how often the worker log says a task was retried.

    .venv/bin/python bench/typeahead_bench.py            # REPEAT=3 SLEEP_S=0.3
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mysisterdb.redis_server import start_redis  # noqa: E402
from tests.conftest import start_stack  # noqa: E402
from tests.procs import Stack  # noqa: E402

REPEAT = int(os.environ.get("REPEAT", "3"))
SLEEP_S = float(os.environ.get("SLEEP_S", "0.3"))
TYPED_AHEAD = 5


def run_batch(stack: Stack, count: int) -> float:
    cid = f"ahead-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    ids = [stack.submit(f"#sim:sleep={SLEEP_S} {i}番目", conversation_id=cid)["id"]
           for i in range(count)]
    for job_id in ids:
        job = stack.wait_job(job_id, timeout_s=120)
        assert job["status"] == "completed", job
    return time.monotonic() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis()
        stack = start_stack(redis_url=server.url, log_dir=Path(tmp))
        try:
            run_batch(stack, 1)  # warm-up
            single = statistics.median(run_batch(stack, 1) for _ in range(REPEAT))
            five = statistics.median(run_batch(stack, TYPED_AHEAD) for _ in range(REPEAT))
            retries = stack.procs["worker"].log().count("Retry in")
        finally:
            stack.stop()
            server.stop()
    print(f"reply time (simulator sleep): {SLEEP_S:.2f} s, {REPEAT} runs each, medians")
    print(f"one prompt:                   {single:.3f} s")
    print(f"{TYPED_AHEAD} typed ahead, one conv:    {five:.3f} s")
    print(f"ratio five / one:             {five / single:.2f} (ideal {TYPED_AHEAD:.1f})")
    print(f"beyond {TYPED_AHEAD} single jobs:          {(five - TYPED_AHEAD * single) * 1000:.0f} ms")
    print(f"task retries logged:          {retries}")


if __name__ == "__main__":
    main()
