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
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import start_stack
from tests.procs import Stack, wait_for
from tests.sentinel_set import MASTER, SentinelSet, start_sentinel_set

CLIENTS = 20
PACE_S = 0.5  # between one client's submits


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


@dataclass
class Clients:
    """CLIENTS people submitting at a steady pace, each in a conversation of their own."""

    stack: Stack
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> marker
    refused: list[float] = field(default_factory=list)  # when each 503 came
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            marker = f"ha-{client}-{n}"
            try:
                r = submit(self.stack, marker, f"ha-client-{client}")
            except httpx.HTTPError as exc:
                with self.lock:
                    self.unexpected.append(f"{marker}: {exc!r}")
                continue
            with self.lock:
                if r.status_code == 202:
                    self.accepted[r.json()["id"]] = marker
                elif r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable":
                    self.refused.append(time.monotonic())
                elif r.status_code != 429:  # the queue cap may speak: not a failure
                    self.unexpected.append(f"{marker}: {r.status_code} {r.text}")
            self.stop.wait(PACE_S)


def test_a_stack_through_sentinels_survives_the_primarys_death(
        sentinel_set: SentinelSet, ha_stack: Stack) -> None:
    before = ha_stack.submit("フェイルオーバーの前", conversation_id="ha-before")
    done = ha_stack.wait_job(before["id"], timeout_s=30)
    assert done["status"] == "completed", done
    old = sentinel_set.primary.port
    assert sentinel_set.role(sentinel_set.replica) == "slave"

    clients = Clients(ha_stack)
    threads = [threading.Thread(target=clients.run, args=(i,), daemon=True)
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(clients.accepted) >= CLIENTS, timeout_s=20, what="submits before")
    killed = time.monotonic()
    sentinel_set.primary.kill()
    wait_for(lambda: sentinel_set.master_port() == sentinel_set.replica.port, timeout_s=30,
             what="the Sentinels to promote the replica")
    accepted_at_promotion = len(clients.accepted)
    wait_for(lambda: len(clients.accepted) >= accepted_at_promotion + CLIENTS, timeout_s=30,
             what="submits accepted after the failover")
    clients.stop.set()
    for thread in threads:
        thread.join(10)
    window = (max(clients.refused) - min(clients.refused)) if clients.refused else 0.0
    assert not clients.unexpected, clients.unexpected[:5]  # never a 500, never a hang

    # Every 202'd prompt ends (lost ones: none found), each turn once.
    ends, lost = {}, []
    for job_id in clients.accepted:
        r = httpx.get(f"{ha_stack.api_url}/api/jobs/{job_id}", timeout=5)
        if r.status_code == 404:
            lost.append(job_id)
    for job_id in set(clients.accepted) - set(lost):
        job = ha_stack.wait_job(job_id, timeout_s=120)
        ends[job_id] = job["status"] + (f"/{job['error']['code']}" if job["error"] else "")
    print(f"\nfailover: {CLIENTS} clients, {len(clients.accepted)} prompts accepted (202), "
          f"{len(clients.refused)} refused 503 over {window:.1f} s after SIGKILL of the "
          f"primary; {len(lost)} accepted but lost in the failover; ends: "
          f"{sorted(Counter(ends.values()).items())}")
    # A prompt running when Redis died ends failed, or incomplete once text had arrived
    # (kept, to continue or retry), its worker's claim lost with the store: at most the
    # worker's two slots. The others complete.
    ended = Counter(ends.values())
    assert ended["completed"] >= len(ends) - 2, ended
    assert {e.split("/")[0] for e in ended} <= {"completed", "failed", "incomplete"}, ended
    assert {e.partition("/")[2] for e in ended} <= {"", "worker_lost", "store_unavailable"}, ended
    assert not lost, f"{len(lost)} prompts answered 202 and gone after the failover"
    for client in range(CLIENTS):
        turns = httpx.get(f"{ha_stack.api_url}/api/conversations/ha-client-{client}/messages",
                          timeout=5).json()["turns"]
        asked = [t["user"]["text"] for t in turns]
        assert len(asked) == len(set(asked)), f"a prompt stored twice: {asked}"
    # What was answered before is on the new primary.
    assert ha_stack.job(before["id"])["reply"] == done["reply"]
    assert time.monotonic() - killed < 120

    # The old primary, started again, is told by the Sentinels to follow the new one.
    sentinel_set.primary.start(sentinel_set.folder)
    wait_for(lambda: sentinel_set.role(sentinel_set.primary) == "slave", timeout_s=30,
             what="the old primary to rejoin as a replica")
    assert old != sentinel_set.master_port()
