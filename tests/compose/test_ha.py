"""Redis without a single point of failure, in compose, for real: docker-compose.yml +
docker-compose.ha.yml (primary, replica, three Sentinels, the same image). 20 clients submit
while the primary is `docker kill`ed: the Sentinels promote the replica, the API answers 503
meanwhile (the window printed), then 202 again; no 202'd prompt is lost or stored twice, each
ends; the old primary, started again, is a replica.

A project name and image tag of its own (tests/compose/own.py); the Sentinels'
down-after is 1 s here (MYSISTERDB_SENTINEL_DOWN_AFTER_MS; 5 s by default).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.compose.own import own_compose
from tests.compose.test_stack import CHECKOUT_ID, EXEC_POLL_S, UP_TIMEOUT_S, Compose
from tests.procs import ROOT
from tests.sentinel_set import CLIENTS, Clients

HA_FILE = ROOT / "docker-compose.ha.yml"
HA_NET = f"10.215.{int(CHECKOUT_ID[:2], 16)}"  # one per checkout, as the scaled test's edge
PRIMARY, REPLICA = f"{HA_NET}.10", f"{HA_NET}.11"  # the addresses the Sentinels announce

pytestmark = pytest.mark.timeout(UP_TIMEOUT_S + 300)
# A prompt running across the kill may only end at its hard limit (the note in
# Clients.finish), which the test then waits for: 15 s rather than production's 60 s.
SHORT_LIMITS = {"MYSISTERDB_GEMINI_TIMEOUT": "8", "MYSISTERDB_TASK_SOFT_TIME_LIMIT": "12",
                "MYSISTERDB_TASK_TIME_LIMIT": "15"}


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    with own_compose(tmp_path_factory, name="ha", overrides=(HA_FILE,),
                     env={"MYSISTERDB_SENTINEL_DOWN_AFTER_MS": "1000",
                          "MYSISTERDB_HA_NET": HA_NET, **SHORT_LIMITS,
                          # One token for all the clients, one person: at production's
                          # 30 a minute the second round of submits waited 57 s for the
                          # window (429 rate_limited), not for the failover.
                          "MYSISTERDB_RATE_LIMIT": "100000/minute"}) as stack:
        yield stack


EXEC_TIMEOUT_S = 30  # one `docker compose exec`; a busy engine may take that long


def exec_line(stack: Compose, service: str, *argv: str) -> str:
    """The first line `argv` prints in `service`, "" if it failed or took too long (a
    question asked again by a wait: a slow engine must not end the test)."""
    try:
        done = stack.run("exec", "-T", service, *argv, check=False, timeout_s=EXEC_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.split("\n")[0].strip() if done.returncode == 0 else ""


def primary(stack: Compose) -> str:
    """The primary's address as Sentinel 1 names it."""
    return exec_line(stack, "sentinel-1", "redis-cli", "-p", "26379", "sentinel",
                     "get-master-addr-by-name", "mymaster")


def knows_a_good_replica(stack: Compose, sentinel: str) -> bool:
    """Whether `sentinel` has seen the replica linked to the primary: a Sentinel learns of
    replicas from the primary's INFO (every 10 s), and a primary killed before that ends in
    `-failover-abort-no-good-slave`, the next try 20 s later (seen here once the stack came
    up in 15 s)."""
    line = exec_line(stack, sentinel, "sh", "-c",
                     "redis-cli -p 26379 sentinel replicas mymaster | tr '\\n' ' '")
    return f" {REPLICA} " in f" {line} " and "master-link-status ok" in line \
        and "flags slave " in f"{line} "


def role(stack: Compose, service: str) -> str:
    return exec_line(stack, service, "sh", "-c",
                     'REDISCLI_AUTH="$(cat /run/mysisterdb/redis.password)" redis-cli role')


def kill_the_primary_under_load(stack: Compose, *, replica: str, timeout_s: float) -> Clients:
    """CLIENTS people submitting; `docker kill` of the primary (SIGKILL, no restart by the
    policy) once each got a 202; back once `replica` is primary and each got another.
    The clients are still submitting: `finish()` stops and checks them."""
    def submit(message: str, conversation_id: str) -> httpx.Response:
        return httpx.post(f"{stack.api_url}/api/chat", timeout=10, headers=stack.auth,
                          json={"message": message, "conversation_id": conversation_id})

    clients = Clients(submit)
    clients.start(CLIENTS)
    stack.wait(lambda: len(clients.accepted) >= CLIENTS, what="submits before the kill")
    stack.run("kill", "redis")
    stack.wait(lambda: primary(stack) == replica, what="the replica promoted",
               timeout_s=timeout_s, interval_s=EXEC_POLL_S)
    promoted = len(clients.accepted)
    stack.wait(lambda: len(clients.accepted) >= promoted + CLIENTS, what="submits after",
               timeout_s=timeout_s)
    return clients


def test_a_killed_primary_loses_no_accepted_prompt(ha: Compose) -> None:
    ha.wait(lambda: ha.health()["status"] == "ok", what="health ok")
    before = ha.chat("フェイルオーバーの前", "ha-compose-before")
    # A busy engine can take longer than one `exec` allows: asked again, not failed at once.
    ha.wait(lambda: primary(ha) == PRIMARY, what="Sentinel names the primary",
            interval_s=EXEC_POLL_S)
    for sentinel in ("sentinel-1", "sentinel-2", "sentinel-3"):
        ha.wait(lambda s=sentinel: knows_a_good_replica(ha, s), what=f"{sentinel} to know "
                "the replica", interval_s=EXEC_POLL_S)

    clients = kill_the_primary_under_load(ha, replica=REPLICA, timeout_s=60)
    # Every conversation may have had its prompt running at the kill (a line runs one at
    # a time; the chat worker has slots for all).
    print(f"\nfailover (docker kill of the primary): "
          f"{clients.finish(api_url=ha.api_url, headers=ha.auth, slots=CLIENTS)}")
    again = ha.job(before["id"])
    assert again is not None and again["reply"] == before["reply"]

    ha.run("start", "redis")
    ha.wait(lambda: role(ha, "redis") == "slave", what="the old primary back as a replica",
            interval_s=EXEC_POLL_S,
            timeout_s=60)
    assert primary(ha) == REPLICA
