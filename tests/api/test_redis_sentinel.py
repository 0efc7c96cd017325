"""Redis behind Sentinel, for real: a stack (API, worker, simulator) told only where the three
Sentinels are (MYSISTERDB_REDIS_SENTINELS, MYSISTERDB_REDIS_MASTER) completes chats; the
primary is SIGKILLed; the Sentinels promote the replica; the API answers 503 meanwhile (the
window is measured and printed), then 202 again, and the worker takes the new prompts from the
new primary; what was answered before the kill is still there; the old primary, started
again, comes back as a replica.

tests/sentinel_set.py: the bundled Valkey in each role, on loopback.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import start_stack
from tests.procs import Stack, wait_for
from tests.sentinel_set import MASTER, SentinelSet, start_sentinel_set


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
               "MYSISTERDB_REDIS_PASSWORD": sentinel_set.password})
    yield stack
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
    # Replicated before the kill (asynchronous replication: WAIT 1 makes it so here).
    assert sentinel_set.data_client(sentinel_set.primary).wait(1, 2000) == 1

    killed = time.monotonic()
    sentinel_set.primary.kill()
    refused, answer = 0, None
    while time.monotonic() - killed < 60:
        answer = submit(ha_stack, "フェイルオーバーの後", "ha-after")
        if answer.status_code == 202:
            break
        assert answer.status_code == 503, answer.text  # never a 500, never half a prompt
        assert answer.json()["error"]["code"] == "store_unavailable"
        refused += 1
        time.sleep(0.1)
    window = time.monotonic() - killed
    print(f"\nfailover: 503 for {window:.1f} s ({refused} submits refused) after SIGKILL "
          f"of the primary; the Sentinels named the replica (down-after 1 s)")
    assert answer is not None and answer.status_code == 202, answer and answer.text
    assert sentinel_set.master_port() == sentinel_set.replica.port
    after = ha_stack.wait_job(answer.json()["id"], timeout_s=60)
    assert after["status"] == "completed", after
    # What was answered before is on the new primary.
    assert ha_stack.job(before["id"])["reply"] == done["reply"]

    # The old primary, started again, is told by the Sentinels to follow the new one.
    sentinel_set.primary.start(sentinel_set.folder)
    wait_for(lambda: sentinel_set.role(sentinel_set.primary) == "slave", timeout_s=30,
             what="the old primary to rejoin as a replica")
    assert old != sentinel_set.master_port()

