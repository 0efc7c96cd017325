"""Capacity: many conversations at once on one box, memory per slot, and the old design beside
ours, measured in one run and written as one table (docs/performance.md, "Capacity").

Starts its own redis-server, simulator, chat worker (the default 32 slots, all forked at
start), summary worker and API (`mysisterdb up`'s layout), with limits below so that a hung
prompt ends by itself within seconds; then, in order:

1. the queue's own cost: zero-delay prompts one after the other (job record times) against a
   bare Celery round trip on the same Redis;
2. concurrency: N conversations at once, N = 1, 8, 32, 64, the simulator answering in 3 s;
3. the API while every chat slot hangs (`#sim:hang`) against idle, from a load generator in
   another process;
4. time to kill: `#worker:stuck` and `#sim:hang`, each followed by a prompt of its conversation;
5. memory over time: 1,000 zero-delay prompts (then the per-child memory), 10,000 more;
6. the old design: a synchronous server calling the simulator inside the request, idle and
   with its threads hung.

    .venv/bin/python bench/capacity_bench.py            # print the table
    .venv/bin/python bench/capacity_bench.py --write    # and write it into docs/performance.md
    JOBS=2000 .venv/bin/python bench/capacity_bench.py  # a shorter memory run

`make bench` runs it with --write. About 5 minutes on an idle 2-core box; the memory run stops
early (and says so) if it would not end within MEMORY_BUDGET_S.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import (  # noqa: E402
    Row,
    Trace,
    TreeMem,
    busy_processes,
    cpu_seconds,
    follow,
    load_average,
    now_utc,
    percentile,
    render,
    seconds_between,
    submit_at_once,
    wait_idle,
)
from bench.capacity_baseline import old_design  # noqa: E402
from bench.capacity_doc import DOC, document, write_doc  # noqa: E402
from core import keys  # noqa: E402
from mysisterdb.redis_server import RedisServer, start_redis  # noqa: E402
from tests.conftest import start_stack  # noqa: E402
from tests.procs import Stack, start, wait_for  # noqa: E402

SLOTS = 32
REPLY_S = 3.0
HARD_LIMIT_S = 15.0
LIMITS = {
    "MYSISTERDB_WORKER_CONCURRENCY": str(SLOTS),
    "MYSISTERDB_TASK_TIME_LIMIT": str(HARD_LIMIT_S),
    "MYSISTERDB_TASK_SOFT_TIME_LIMIT": "12",
    "MYSISTERDB_GEMINI_TIMEOUT": "11",  # a hang ends as llm_timeout after ~11.5 s
    "MYSISTERDB_GEMINI_RETRIES": "1",
    "MYSISTERDB_LOG_LEVEL": "WARNING",
}
CONCURRENCY_ROUNDS = {1: 5, 8: 3, 32: 2, 64: 1}
JOBS = int(os.environ.get("JOBS", "10000"))
WARMUP_JOBS = int(os.environ.get("WARMUP_JOBS", "1000"))
MEMORY_BUDGET_S = float(os.environ.get("MEMORY_BUDGET_S", "240"))
IN_FLIGHT = 48  # prompts kept stored-and-unfinished during the memory run
CONVERSATIONS = 500
LOAD_SECONDS = 8.0
LOAD_RATE = 20.0


@dataclass
class Bench:
    stack: Stack
    redis: redis.Redis
    server: RedisServer
    api: httpx.Client
    log_dir: Path

    def worker_mem(self) -> TreeMem:
        return TreeMem.of(self.stack.procs["worker"].process.pid)

    def all_workers_pss(self) -> float:
        return sum(TreeMem.of(self.stack.procs[name].process.pid).pss_total
                   for name in ("worker", "summary-worker"))

    def forked(self) -> int:
        return len(self.worker_mem().children)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each part of the stack."""
        import psutil

        procs = self.stack.procs
        main = psutil.Process(procs["worker"].process.pid)
        times = main.cpu_times()
        alive = sum(cpu_seconds(c.pid) for c in main.children(recursive=True))
        return {"API": cpu_seconds(procs["api"].process.pid),
                "worker main": times.user + times.system,
                # the pool's children alive now, plus those that exited (recycled, shrunk)
                "worker children": alive + times.children_user + times.children_system,
                "simulator": cpu_seconds(procs["simulator"].process.pid),
                "Redis": cpu_seconds(self.server.process.pid)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


# -- 1. the queue's own cost ------------------------------------------------------------------

def queue_cost(b: Bench, n: int = 60) -> list[Row]:
    end_to_end, steps, submit_ms = [], [], []
    for i in range(n):
        started = time.monotonic()
        trace = submit_at_once(b.api, [(f"qc-{i}", "#sim:pace=0 こんにちは")])[0]
        submit_ms.append(time.monotonic() - started)
        record = follow(b.redis, [trace], timeout_s=30, interval_s=0.002)[0].record
        end_to_end.append(seconds_between(record["created_at"], record["completed_at"]) or 0.0)
        steps.append(sum(seconds_between(s["started_at"], s["completed_at"]) or 0.0
                         for s in record["steps"]))
    raw = raw_celery_round_trips(b, n)
    e2e, own = statistics.median(end_to_end), statistics.median(steps)
    rt = statistics.median(raw)
    return [
        Row("queue's own cost (zero-delay Gemini, one prompt at a time, medians of "
            f"{n})", "submit → completed (job record)", ms(e2e)),
        Row("", "of which the four steps (load, build, generate, save)", ms(own)),
        Row("", "of which the queue (submit → completed minus the steps)",
            f"{ms(e2e - own)} (× {(e2e - own) / rt:.1f} bare Celery)"),
        Row("", "bare Celery round trip, same Redis (send → result)", ms(rt)),
        Row("", "POST /api/chat answered (202)", ms(statistics.median(submit_ms))),
    ]


def raw_celery_round_trips(b: Bench, n: int) -> list[float]:
    env = {**os.environ, "RAW_CELERY_BROKER": b.stack.redis_url, "PYTHONPATH": str(ROOT)}
    worker = start("raw-celery", [sys.executable, "-m", "celery", "-A", "bench.raw_celery",
                                  "worker", "--pool=prefork", "--concurrency=1", "--queues=raw",
                                  "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
                   env=env, log_dir=b.log_dir)
    os.environ["RAW_CELERY_BROKER"] = b.stack.redis_url
    from bench.raw_celery import app, noop

    try:
        noop.delay(0).get(timeout=60)  # the worker is up
        times = []
        for i in range(n):
            started = time.monotonic()
            noop.delay(i).get(timeout=10)
            times.append(time.monotonic() - started)
        return times
    finally:
        app.close()
        worker.stop()


# -- 2. concurrency ---------------------------------------------------------------------------

def concurrency(b: Bench) -> list[Row]:
    rows: list[Row] = []
    for n, rounds in CONCURRENCY_ROUNDS.items():
        traces: list[Trace] = []
        rates, pools, p99s, peak_pss = [], [], [], 0.0
        cpu_before = b.cpu()
        for r in range(rounds):
            wait_idle(b.redis)
            pools.append(b.forked())
            prompts = [(f"cc{n}-{r}-{i}", f"#sim:pace={REPLY_S:g} {i}人目だよ") for i in range(n)]
            batch = follow(b.redis, submit_at_once(b.api, prompts), timeout_s=120)
            peak_pss = max(peak_pss, b.all_workers_pss())
            span = max(t.final or 0 for t in batch) - min(t.submitted for t in batch)
            rates.append(n / span)
            p99s.append(percentile([t.done_s or 0.0 for t in batch], 99))
            traces += batch
        cpu_after = b.cpu()
        rows += concurrency_rows(n, traces, rates, pools, peak_pss)
        per_prompt = {k: (cpu_after[k] - cpu_before[k]) / len(traces) for k in cpu_after}
        rows.append(Row(rows[-1].section, "CPU per prompt (ms): " + ", ".join(per_prompt),
                        " / ".join(f"{v * 1000:.0f}" for v in per_prompt.values())
                        + f" = {sum(per_prompt.values()) * 1000:.0f}"))
        if rounds > 1:
            rows.insert(len(rows) - 2, Row(rows[-1].section, "completion p99 of each round "
                                           "(pool at its start)", ", ".join(
                f"{ms(p)} ({pool})" for p, pool in zip(p99s, pools, strict=True))))
    return rows


def concurrency_rows(n: int, traces: list[Trace], rates: list[float], pools: list[int],
                     peak_pss: float) -> list[Row]:
    done = [t.done_s or 0.0 for t in traces]
    ttft = [t.ttft_s or 0.0 for t in traces]
    failed = sum(t.record.get("status") != "completed" for t in traces)
    ideal = min(n, SLOTS) / REPLY_S
    rate = statistics.mean(rates)
    section = (f"{n} at once, reply {REPLY_S:g} s ({len(traces)} prompts; pool at start "
               f"{'/'.join(map(str, pools))} processes)")
    goal_done = f"≤ {1.2 * REPLY_S:.1f} s (1.2 × {REPLY_S:g} s)" if n == SLOTS else ""
    p99 = percentile(done, 99)
    return [
        Row(section, "first text p50 / p99", f"{ms(percentile(ttft, 50))} / "
            f"{ms(percentile(ttft, 99))}"),
        Row(section, "completion p50 / p99", f"{ms(percentile(done, 50))} / {ms(p99)}",
            goal_done, (p99 <= 1.2 * REPLY_S and failed == 0) if n == SLOTS else None),
        Row(section, "jobs/s vs ideal min(N, slots) / 3 s",
            f"{rate:.2f} / {ideal:.2f} = {rate / ideal:.2f}"),
        Row(section, "worker memory (PSS, both workers, at the end)", f"{peak_pss:.0f} MB",
            "≤ 1.5 GB" if n == SLOTS else "", peak_pss <= 1536 if n == SLOTS else None),
        *([Row(section, "not completed", str(failed), "0", False)] if failed else []),
    ]


# -- 3. the API while every slot hangs ------------------------------------------------------

def loadgen(url: str, *, kinds: str, poll_job: str = "none",
            message: str = "#sim:pace=0 ロードテスト") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url", url, "--seconds",
         str(LOAD_SECONDS), "--rate", str(LOAD_RATE), "--kinds", kinds, "--poll-job", poll_job,
         "--message", message], capture_output=True, text=True, check=True,
        timeout=LOAD_SECONDS + 60)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def hung_api(b: Bench) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    wait_idle(b.redis)
    done = submit_at_once(b.api, [("poll-target", "#sim:pace=0 ポーリング用")])
    follow(b.redis, done, timeout_s=30)
    idle = loadgen(b.stack.api_url, kinds="health,submit,poll", poll_job=done[0].job_id)
    wait_idle(b.redis)
    hangs = submit_at_once(b.api, [(f"hang-{i}", "#sim:hang") for i in range(SLOTS)])
    wait_for(lambda: b.redis.zcard(keys.running_jobs()) >= SLOTS, timeout_s=60,
             what="every slot hung")
    hung = loadgen(b.stack.api_url, kinds="health,submit,poll", poll_job=done[0].job_id)
    still_hung = b.redis.zcard(keys.running_jobs())
    follow(b.redis, hangs, timeout_s=60)  # they end by their request timeout
    wait_idle(b.redis)
    rows = []
    for kind in ("health", "submit", "poll"):
        i99, h99 = percentile(idle[kind]["ms"], 99), percentile(hung[kind]["ms"], 99)
        ratio = h99 / i99
        rows.append(Row(
            f"API with all {SLOTS} slots hung on #sim:hang vs idle ({LOAD_RATE:g} req/s per "
            f"kind for {LOAD_SECONDS:g} s, load generator in another process; {still_hung} "
            "still hung at the end)",
            f"{kind} p50 / p99 (ms): idle → hung",
            f"{percentile(idle[kind]['ms'], 50):.1f} / {i99:.1f} → "
            f"{percentile(hung[kind]['ms'], 50):.1f} / {h99:.1f} (×{ratio:.2f})",
            "hung/idle p99 ≤ 1.5, p99 < 25 ms", ratio <= 1.5 and h99 < 25))
    return rows, idle, hung


# -- 4. time to kill --------------------------------------------------------------------------

def time_to_kill(b: Bench) -> list[Row]:
    wait_idle(b.redis)
    cases = [("#worker:stuck", f"kill-stuck-{i}") for i in range(2)]
    cases += [("#sim:hang", f"kill-hang-{i}") for i in range(2)]
    first = submit_at_once(b.api, [(conv, text) for text, conv in cases])
    after = submit_at_once(b.api, [(conv, "#sim:pace=0 次の質問") for _, conv in cases])
    follow(b.redis, first + after, timeout_s=HARD_LIMIT_S * 3)
    rows = []
    for kind in ("#worker:stuck", "#sim:hang"):
        pairs = [(k.record, f.record) for (text, _), k, f in zip(cases, first, after, strict=True)
                 if text == kind]
        ends = [seconds_between(k["started_at"], k["completed_at"]) or 0.0 for k, _ in pairs]
        nexts = [seconds_between(k["completed_at"], f["completed_at"]) or 0.0 for k, f in pairs]
        how = f"ended {'; '.join(sorted({outcome(k) for k, _ in pairs}))}"
        rows += [
            Row(f"time to kill, hard limit L = {HARD_LIMIT_S:g} s", f"{kind}: start → end − L "
                f"({how})", " / ".join(f"{e - HARD_LIMIT_S:+.2f} s" for e in ends), "≤ 2 s",
                max(ends) - HARD_LIMIT_S <= 2),
            Row(f"time to kill, hard limit L = {HARD_LIMIT_S:g} s", f"{kind}: its end → the "
                "next prompt of the conversation completed",
                " / ".join(f"{x:.2f} s" for x in nexts), "≤ 3 s", max(nexts) <= 3),
        ]
    return rows


def outcome(record: dict[str, Any]) -> str:
    return f"{record['status']} {(record.get('error') or {}).get('code', '')}".strip()


# -- 5. memory over time ----------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    jobs: int
    worker_pss: float
    child_uss: list[float]
    child_pss: list[float]
    api_rss: float
    redis_rss: float
    redis_used: float
    messages: int

    @classmethod
    def take(cls, b: Bench, jobs: int) -> Snapshot:
        import psutil

        tree = b.worker_mem()
        info = b.redis.info("memory")
        with b.redis.pipeline(transaction=False) as pipe:
            for c in range(CONVERSATIONS):
                pipe.zcard(keys.conv_messages(f"mem-{c}"))
            messages = sum(int(n) for n in pipe.execute())
        return cls(jobs=jobs, worker_pss=b.all_workers_pss(), child_uss=tree.child_uss(),
                   child_pss=[m.pss for m in tree.children.values()],
                   api_rss=psutil.Process(b.stack.procs["api"].process.pid).memory_info().rss
                   / 2 ** 20, redis_rss=info["used_memory_rss"] / 2 ** 20,
                   redis_used=info["used_memory"], messages=messages)


def run_jobs(b: Bench, count: int, *, start: int, budget_s: float) -> tuple[int, float]:
    """Keep IN_FLIGHT prompts stored and unfinished until `count` were submitted; wait for
    them all. Returns (submitted, seconds)."""
    started, submitted = time.monotonic(), 0
    lock = threading.Lock()

    def submitter() -> None:
        nonlocal submitted
        with httpx.Client(base_url=b.stack.api_url, timeout=10) as api:
            while time.monotonic() - started < budget_s:
                with lock:
                    if submitted >= count:
                        return
                    if b.redis.zcard(keys.active_jobs()) >= IN_FLIGHT:
                        number = None
                    else:
                        number, submitted = start + submitted, submitted + 1
                if number is None:
                    time.sleep(0.01)  # the box is busy enough: do not spin on Redis
                    continue
                api.post("/api/chat", json={"conversation_id": f"mem-{number % CONVERSATIONS}",
                                            "message": f"#sim:pace=0 {number}番目のメッセージだよ"}
                         ).raise_for_status()

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_idle(b.redis, timeout_s=300)
    return submitted, time.monotonic() - started


def memory_over_time(b: Bench) -> list[Row]:
    wait_idle(b.redis)
    budget_end = time.monotonic() + MEMORY_BUDGET_S
    warm, warm_s = run_jobs(b, WARMUP_JOBS, start=0, budget_s=MEMORY_BUDGET_S)
    before = Snapshot.take(b, warm)
    done, done_s = run_jobs(b, JOBS, start=warm, budget_s=max(1.0, budget_end - time.monotonic()))
    after = Snapshot.take(b, warm + done)
    per_message = (after.redis_used - before.redis_used) / max(1, after.messages - before.messages)
    section = (f"memory over time ({done:,} zero-delay prompts after {warm:,} warm-up ones, "
               f"{IN_FLIGHT} in flight, {CONVERSATIONS} conversations; "
               f"{done / done_s:.0f} prompts/s)")
    if done < JOBS:
        section += f" — stopped at the {MEMORY_BUDGET_S:g} s budget, not {JOBS:,}"
    growth = after.worker_pss / before.worker_pss - 1
    api_growth = after.api_rss / before.api_rss - 1
    uss = before.child_uss
    return [
        Row(section, f"chat child USS after {warm:,} prompts: mean / max "
            f"({len(uss)} children; PSS mean {statistics.mean(before.child_pss):.1f} MB)",
            f"{statistics.mean(uss):.1f} / {max(uss):.1f} MB", "≤ 30 MB", max(uss) <= 30),
        Row(section, f"chat child USS after {warm + done:,}: mean / max (PSS mean "
            f"{statistics.mean(after.child_pss):.1f} MB)",
            f"{statistics.mean(after.child_uss):.1f} / {max(after.child_uss):.1f} MB",
            "≤ 30 MB", max(after.child_uss) <= 30),
        Row(section, "workers PSS (both, all processes) before → after",
            f"{before.worker_pss:.0f} → {after.worker_pss:.0f} MB ({growth:+.1%})", "≤ +5%",
            growth <= 0.05),
        Row(section, "API RSS before → after",
            f"{before.api_rss:.0f} → {after.api_rss:.0f} MB ({api_growth:+.1%})", "≤ +5%",
            api_growth <= 0.05),
        Row(section, "Redis RSS before → after (stored data grows it)",
            f"{before.redis_rss:.0f} → {after.redis_rss:.0f} MB"),
        Row(section, "Redis bytes per stored message (message, job record, index)",
            f"{per_message:,.0f} B"),
    ]


def run(b: Bench) -> list[Row]:
    rows: list[Row] = []

    def section(new: list[Row]) -> None:
        rows.extend(new)
        print(render(new), flush=True)

    section(queue_cost(b))
    section(concurrency(b))
    hung_rows, idle, hung = hung_api(b)
    section(hung_rows)
    section(time_to_kill(b))
    section(memory_over_time(b))
    section(old_design(b.stack.sim_url, b.log_dir, ours_hung=hung, ours_idle=idle,
                       loadgen=loadgen, slots=SLOTS))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="write the table into " + str(DOC))
    args = parser.parse_args()
    began, load_before, started = now_utc(), load_average(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis()
        stack = start_stack(redis_url=server.url, log_dir=Path(tmp), extra=LIMITS,
                            worker_roles=("chat", "summary"))
        api = httpx.Client(base_url=stack.api_url, timeout=10,
                           limits=httpx.Limits(max_connections=2 * SLOTS + 8))
        bench = Bench(stack=stack, redis=redis.Redis.from_url(stack.redis_url), server=server,
                      api=api, log_dir=Path(tmp))
        try:
            rows = run(bench)
        finally:
            api.close()
            stack.stop()
            server.stop()
    text = document(rows, began=began, load_before=load_before, load_after=load_average(),
                    busy=busy_processes(), seconds=time.monotonic() - started)
    print(text)
    if args.write:
        write_doc(text)


if __name__ == "__main__":
    main()

