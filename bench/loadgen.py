"""A load generator in its own process: health, submit and poll requests at a fixed rate,
each kind from its own thread, for a fixed time; prints the latencies (ms) as JSON.

A request that gets no answer within the timeout counts as the timeout (and in "timeouts").
The capacity benchmark runs it against our API and against the synchronous baseline.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000 --seconds 8 --rate 20 \\
        [--poll-job ID] [--message "#sim:pace=0 hi"]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

TIMEOUT_S = 2.0


def request_for(kind: str, args: argparse.Namespace) -> Callable[[httpx.Client], httpx.Response]:
    if kind == "health":
        return lambda c: c.get("/api/health")
    if kind == "submit":
        return lambda c: c.post("/api/chat", json={
            "message": args.message, "conversation_id": f"load-{uuid.uuid4().hex[:12]}"})
    return lambda c: c.get(f"/api/jobs/{args.poll_job}")


def run_kind(kind: str, args: argparse.Namespace, out: dict[str, Any]) -> None:
    send = request_for(kind, args)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    timeouts = 0
    interval = 1.0 / args.rate
    with httpx.Client(base_url=args.url, timeout=TIMEOUT_S) as client:
        start = next_at = time.monotonic()
        while time.monotonic() - start < args.seconds:
            time.sleep(max(0.0, next_at - time.monotonic()))
            sent = time.monotonic()
            try:
                status = str(send(client).status_code)
            except httpx.TimeoutException:
                status, timeouts = "timeout", timeouts + 1
            latencies.append((time.monotonic() - sent) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            # A late answer is not made up for with a burst: the next request waits its turn.
            next_at = max(next_at + interval, time.monotonic())
    out[kind] = {"ms": latencies, "statuses": statuses, "timeouts": timeouts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per kind")
    parser.add_argument("--kinds", default="health,submit,poll")
    parser.add_argument("--poll-job", default="none")
    parser.add_argument("--message", default="#sim:pace=0 ロードテスト")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    threads = [threading.Thread(target=run_kind, args=(k, args, out))
               for k in args.kinds.split(",")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
