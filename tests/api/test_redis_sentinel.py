"""Redis behind Sentinel, for real: a stack (API, worker, simulator) told only where the three
Sentinels are (MYSISTERDB_REDIS_SENTINELS, MYSISTERDB_REDIS_MASTER) completes chats; the
primary is SIGKILLed; the Sentinels promote the replica; the API answers 503 meanwhile (the
window is measured and printed), then 202 again, and the worker takes the new prompts from the
new primary; what was answered before the kill is still there; the old primary, started
again, comes back as a replica.

tests/sentinel_set.py: the bundled Valkey in each role, on loopback.

The worker is supervised as `mysisterdb up` and compose do (restarted when it exits): under
load a pool child killed at its hard limit across the failover once garbled its result, Celery
stopped with "Unrecoverable error: UnicodeDecodeError", the bounded stop (workers/bounded_stop.py)
ended the worker, and with no supervisor the prompts still queued never ran.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import start_stack
from tests.procs import Stack, mysisterdb, start, wait_for
from tests.sentinel_set import CLIENTS, MASTER, Clients, SentinelSet, start_sentinel_set


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    found = start_sentinel_set(tmp_path_factory.mktemp("sentinel"), secrets.token_hex(16))
    yield found
    found.stop()


@pytest.fixture(scope="module")
def ha_stack(sentinel_set: SentinelSet,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        # Only what a Sentinel deployment gives: no Redis address, the Sentinels'.
        redis_url="", log_dir=tmp_path_factory.mktemp("ha-stack"),
        extra={"MYSISTERDB_REDIS_SENTINELS": sentinel_set.sentinel_list,
               "MYSISTERDB_REDIS_MASTER": MASTER,
               "MYSISTERDB_REDIS_PASSWORD": sentinel_set.password,
               # A stuck stop ends after the chat limit plus 1 s, not the summary's 60 + 10.
               "MYSISTERDB_SUMMARY_TIME_LIMIT": "6", "MYSISTERDB_WORKER_STOP_GRACE_S": "1"})
    stop = threading.Event()

    def supervise() -> None:
        restarts = 0
        while not stop.wait(0.5):
            if stack.procs["worker"].process.poll() is not None:
                restarts += 1
                print(f"worker exited ({stack.procs['worker'].process.returncode}); restarted")
                log_dir = stack.procs["worker"].log_path.parent / f"restart{restarts}"
                log_dir.mkdir()
                stack.procs["worker"] = start("worker", mysisterdb("worker"), env=stack.env,
                                              log_dir=log_dir)

    supervisor = threading.Thread(target=supervise, daemon=True, name="supervisor")
    supervisor.start()
    yield stack
    stop.set()
    supervisor.join(5)
    stack.stop()


def submit(stack: Stack, message: str, conversation_id: str) -> httpx.Response:
    return httpx.post(f"{stack.api_url}/api/chat", timeout=5,
                      json={"message": message, "conversation_id": conversation_id})


def test_a_stack_through_sentinels_survives_the_primarys_death(
        sentinel_set: SentinelSet, ha_stack: Stack) -> None:
    before = ha_stack.submit("フェイルオーバーの前", conversation_id="ha-before")
    done = ha_stack.wait_job(before["id"], timeout_s=30)
    assert done["status"] == "completed", done
    old = sentinel_set.primary.port
    assert sentinel_set.role(sentinel_set.replica) == "slave"

    clients = Clients(lambda message, cid: submit(ha_stack, message, cid))
    clients.start(CLIENTS)
    wait_for(lambda: len(clients.accepted) >= CLIENTS, timeout_s=20, what="submits before")
    killed = time.monotonic()
    sentinel_set.primary.kill()
    wait_for(lambda: sentinel_set.master_port() == sentinel_set.replica.port, timeout_s=30,
             what="the Sentinels to promote the replica")
    accepted_at_promotion = len(clients.accepted)
    wait_for(lambda: len(clients.accepted) >= accepted_at_promotion + CLIENTS, timeout_s=30,
             what="submits accepted after the failover")
    print(f"\nfailover (SIGKILL of the primary): "
          f"{clients.finish(api_url=ha_stack.api_url, headers={}, slots=2)}")
    # What was answered before is on the new primary.
    assert ha_stack.job(before["id"])["reply"] == done["reply"]
    assert time.monotonic() - killed < 120

    # The old primary, started again, is told by the Sentinels to follow the new one.
    sentinel_set.primary.start(sentinel_set.folder)
    wait_for(lambda: sentinel_set.role(sentinel_set.primary) == "slave", timeout_s=30,
             what="the old primary to rejoin as a replica")
    assert old != sentinel_set.master_port()
