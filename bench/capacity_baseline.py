"""The capacity bench's baseline: the old synchronous design (Gemini called inside the
request) under the same load, so each of our figures has the old one beside it."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.benchlib import Row, percentile
from mysisterdb.redis_server import free_port
from tests.procs import http_ok, start, wait_for

ROOT = Path(__file__).resolve().parent.parent


def old_design(sim_url: str, log_dir: Path, *, ours_hung: dict[str, Any],
               ours_idle: dict[str, Any], loadgen: Callable[..., dict[str, Any]],
               slots: int) -> list[Row]:
    """The same load on the first version's design, measured in the same run."""
    port = free_port()
    server = start("sync-baseline", [sys.executable, str(ROOT / "bench" / "sync_server.py"),
                                     "--port", str(port), "--gemini", sim_url],
                   env=dict(os.environ), log_dir=log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(http_ok(f"{url}/api/health"), timeout_s=30, what="sync baseline")
        idle = loadgen(url, kinds="health,submit")
        hang_threads = [threading.Thread(target=hang_one, args=(url,), daemon=True)
                        for _ in range(2 * slots)]
        for t in hang_threads:
            t.start()
        time.sleep(1.0)
        hung = loadgen(url, kinds="health,submit")
    finally:
        server.stop(timeout_s=2)
    section = (f"the old design: synchronous server, Gemini called inside the request "
               f"(40 threads), {2 * slots} prompts hung")
    return [baseline_row(section, kind, idle, hung, ours_idle, ours_hung)
            for kind in ("health", "submit")]


def hang_one(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}/api/chat", json={"message": "#sim:hang"}, timeout=120)


def baseline_row(section: str, kind: str, idle: dict[str, Any], hung: dict[str, Any],
                 ours_idle: dict[str, Any], ours_hung: dict[str, Any]) -> Row:
    def describe(run: dict[str, Any]) -> str:
        p99 = percentile(run[kind]["ms"], 99)
        lost = run[kind]["timeouts"]
        return f"{p99:.0f} ms" + (f" ({lost}/{len(run[kind]['ms'])} timed out at 2 s)"
                                   if lost else "")

    return Row(section, f"{kind} p99: old idle → old hung | ours idle → ours hung",
               f"{describe(idle)} → {describe(hung)} | {describe(ours_idle)} → "
               f"{describe(ours_hung)}")


