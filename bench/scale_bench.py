"""The scaled and HA stacks beside the single one, on the same box and under the same load
(issue 19 item 5): compose's single stack (`docker-compose.yml`: one API, one chat worker),
the scaled one (`+ docker-compose.scale.yml`, nginx in front, `--scale api=2 --scale
worker=2`) and the HA one (`+ docker-compose.ha.yml`: a replica and three Sentinels), each
built from this checkout and brought up in turn, then sent the same bursts of conversations
at once with replies paced by the simulator. Printed per stack: p50 / p99 of the time from
submit to the first text a poller sees and to the final state, and how many completed; for
HA also a failover: 20 clients submitting while the primary is `docker kill`ed, with the
Sentinels' production down-after (5 s): how long submits got 503, and how many 202'd
prompts were lost. On one box the scaled stack cannot be faster (the same two cores); what
it shows is what the proxy, the second replica and Sentinel cost, and that nothing is lost.

    .venv/bin/python bench/scale_bench.py [--conversations 32] [--pace 3] [--rounds 2] \
        [--only single,scaled,ha]

Needs Docker with Compose v2 (tests/compose/ explains how CI gets one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import Row, load_average, machine, now_utc, percentile, render  # noqa: E402
from mysisterdb.redis_server import free_port  # noqa: E402
from tests.compose.test_ha import kill_the_primary_under_load  # noqa: E402
from tests.compose.test_stack import (  # noqa: E402
    CHECKOUT_ID,
    COMPOSE_FILE,
    FINAL,
    UP_TIMEOUT_S,
    Compose,
    compose_env,
    docker_missing,
)
from tests.procs import ROOT  # noqa: E402
from tests.sentinel_set import CLIENTS  # noqa: E402

SCALE_FILE = ROOT / "docker-compose.scale.yml"
HA_FILE = ROOT / "docker-compose.ha.yml"
FILES = {"single": (COMPOSE_FILE,), "scaled": (COMPOSE_FILE, SCALE_FILE),
         "ha": (COMPOSE_FILE, HA_FILE)}
POLL_S = 0.05


@contextmanager
def stack_up(kind: str, folder: Path, *, conversations: int) -> Iterator[Compose]:
    env_file = folder / "empty.env"
    env_file.write_text("")
    api_port, proxy_port = free_port(), free_port()
    env = {**compose_env(api_port, free_port()),
           "MYSISTERDB_PROXY_HOST_PORT": str(proxy_port),
           # One person sends every prompt of the bench: neither limit is what is measured.
           "MYSISTERDB_RATE_LIMIT": "100000/minute",
           "MYSISTERDB_MAX_QUEUE_DEPTH": str(conversations * 4)}
    scaled = kind == "scaled"
    stack = Compose(project=f"mysisterdb-bench-{kind}-{CHECKOUT_ID}", env=env,
                    env_file=env_file,
                    api_url=f"http://127.0.0.1:{proxy_port if scaled else api_port}",
                    files=FILES[kind])
    scale = ["--scale", "api=2", "--scale", "worker=2"] if scaled else []
    try:
        stack.run("down", "-v", "--remove-orphans")
        stack.run("up", "-d", "--build", "--wait", *scale, timeout_s=UP_TIMEOUT_S)
        stack.token = stack.run("exec", "-T", "api", "mysisterdb", "token").stdout.strip()
        stack.wait(lambda: stack.health()["status"] == "ok", what=f"{kind} health")
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)


def one_prompt(client: httpx.Client, message: str) -> dict[str, Any]:
    """Submit, then poll until the end: seconds to the first text and to the final state."""
    started = time.monotonic()
    r = client.post("/api/chat", json={"message": message,
                                       "conversation_id": f"scale-{uuid.uuid4().hex[:10]}"})
    if r.status_code != 202:
        return {"status": f"http {r.status_code}"}
    job_id, first = r.json()["id"], None
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if first is None and job.get("partial_reply"):
            first = time.monotonic() - started
        if job["status"] in FINAL:
            return {"status": job["status"], "first": first or time.monotonic() - started,
                    "final": time.monotonic() - started}
        time.sleep(POLL_S)


def burst(stack: Compose, *, conversations: int, pace_s: float) -> list[dict[str, Any]]:
    message = f"いっぱい話して #sim:pace={pace_s:g}"
    with httpx.Client(base_url=stack.api_url, headers=stack.auth, timeout=10) as client, \
            ThreadPoolExecutor(max_workers=conversations) as pool:
        return list(pool.map(lambda _: one_prompt(client, message), range(conversations)))


def rows_for(kind: str, results: list[dict[str, Any]]) -> list[Row]:
    done = [r for r in results if r["status"] == "completed"]
    firsts, finals = [r["first"] for r in done], [r["final"] for r in done]

    def spread(values: list[float]) -> str:
        return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}" if values else "-"
    return [Row(kind, "first text p50 / p99 (s)", spread(firsts)),
            Row(kind, "final state p50 / p99 (s)", spread(finals)),
            Row(kind, "completed", f"{len(done)} / {len(results)}", goal="all",
                met=len(done) == len(results))]


def failover_rows(stack: Compose) -> list[Row]:
    replica = f"{stack.env.get('MYSISTERDB_HA_NET', '172.30.182')}.11"  # compose's default
    clients = kill_the_primary_under_load(stack, replica=replica, timeout_s=120)
    line = clients.finish(api_url=stack.api_url, headers=stack.auth, slots=CLIENTS)
    print(f"failover: {line}", flush=True)
    window = max(clients.refused) - min(clients.refused) if clients.refused else 0.0
    return [Row("ha", "failover: submits answered 503 for (s)", f"{window:.1f}"),
            Row("ha", "failover: 202'd prompts lost", "0", goal="0", met=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--pace", type=float, default=3.0, help="seconds per simulated reply")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per stack (the first warms)")
    parser.add_argument("--only", default="single,scaled,ha", help="which stacks, in order")
    args = parser.parse_args()
    reason = docker_missing()
    if reason:
        sys.exit(f"scale bench not run: {reason}")
    print(f"# scale bench, {now_utc()}, {machine()}")
    rows: list[Row] = []
    for kind in args.only.split(","):
        with tempfile.TemporaryDirectory() as tmp, \
                stack_up(kind, Path(tmp), conversations=args.conversations) as stack:
            results: list[dict[str, Any]] = []
            for _ in range(args.rounds):
                results = burst(stack, conversations=args.conversations, pace_s=args.pace)
            rows += rows_for(kind, results)  # the last round: every slot forked and warm
            if kind == "ha":
                rows += failover_rows(stack)
            print(f"{kind} done (load {load_average()})", flush=True)
    print(render(rows))


if __name__ == "__main__":
    main()
