"""A Redis primary, a replica and three Sentinels on loopback, for the tests: the bundled
Valkey in each role (`valkey-server … --sentinel` is its Sentinel), with a password, quick
failure detection (down after 1 s) and configuration files in a folder of the test's own
(Sentinels rewrite theirs)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from mysisterdb.redis_server import free_port, redis_server_binary
from tests.procs import wait_for

MASTER = "mymaster"
CLIENTS = 20  # people submitting across a failover
PACE_S = 0.5  # between one client's submits


@dataclass
class Node:
    name: str
    port: int
    config: Path
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = None

    def start(self, folder: Path) -> Node:
        argv = [redis_server_binary(), str(self.config), *(["--sentinel"] if self.sentinel else [])]
        log = (folder / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        log.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@dataclass
class SentinelSet:
    folder: Path
    password: str
    primary: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)

    @property
    def sentinel_list(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def data_client(self, node: Node) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, password=self.password,
                           socket_timeout=2, socket_connect_timeout=2)

    def master_port(self) -> int | None:
        """The primary's port, as the first Sentinel that answers says."""
        for node in self.sentinels:
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1,
                                 socket_connect_timeout=1)
            try:
                found = client.sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if found:
                return int(found[1])
        return None

    def role(self, node: Node) -> str:
        client = self.data_client(node)
        try:
            return client.role()[0].decode()  # type: ignore[no-any-return]
        finally:
            client.close()

    def stop(self) -> None:
        for node in (*self.sentinels, self.primary, self.replica):
            node.kill()


def data_config(folder: Path, name: str, port: int, password: str,
                replica_of: int | None = None) -> Path:
    path = folder / f"{name}.conf"
    lines = [f"port {port}", "bind 127.0.0.1", "protected-mode no", f"requirepass {password}",
             f"masterauth {password}", 'save ""', "appendonly no", f"dir {folder}",
             f"dbfilename {name}.rdb", "maxmemory-policy noeviction"]
    if replica_of is not None:
        lines.append(f"replicaof 127.0.0.1 {replica_of}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def sentinel_config(folder: Path, name: str, port: int, primary: int, password: str) -> Path:
    path = folder / f"{name}.conf"
    path.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode no", f"dir {folder}",
        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
        f"sentinel auth-pass {MASTER} {password}",
        f"sentinel down-after-milliseconds {MASTER} 1000",
        f"sentinel failover-timeout {MASTER} 4000",
        f"sentinel parallel-syncs {MASTER} 1"]) + "\n")
    path.chmod(0o600)
    return path


def start_sentinel_set(folder: Path, password: str) -> SentinelSet:
    primary_port, replica_port = free_port(), free_port()
    primary = Node("primary", primary_port,
                   data_config(folder, "primary", primary_port, password)).start(folder)
    replica = Node("replica", replica_port, data_config(
        folder, "replica", replica_port, password, replica_of=primary_port)).start(folder)
    found = SentinelSet(folder=folder, password=password, primary=primary, replica=replica)
    try:
        wait_for(lambda: found.data_client(replica).info("replication")
                 .get("master_link_status") == "up", timeout_s=20, what="the replica to sync")
        for i in range(3):
            port = free_port()
            found.sentinels.append(Node(f"sentinel{i}", port, sentinel_config(
                folder, f"sentinel{i}", port, primary_port, password), sentinel=True)
                .start(folder))
        wait_for(lambda: found.master_port() == primary_port and all_know_each_other(found),
                 timeout_s=30, what="three Sentinels watching the primary")
    except BaseException:
        found.stop()
        raise
    return found


def all_know_each_other(found: SentinelSet) -> bool:
    client = redis.Redis(host="127.0.0.1", port=found.sentinels[0].port, socket_timeout=1)
    try:
        master = client.sentinel_master(MASTER)
        return int(master["num-other-sentinels"]) >= 2 and int(master["num-slaves"]) >= 1
    finally:
        client.close()


@dataclass
class Clients:
    """CLIENTS people submitting at a steady pace, each in a conversation of their own."""

    submit: Callable[[str, str], httpx.Response]  # (message, conversation id)
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> marker
    refused: list[float] = field(default_factory=list)  # when each 503 came
    unexpected: list[str] = field(default_factory=list)
    declined: Counter[str] = field(default_factory=Counter)  # 429s by error code
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, count: int) -> None:
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def run(self, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            marker = f"ha-{client}-{n}"
            try:
                r = self.submit(marker, f"ha-client-{client}")
            except httpx.HTTPError as exc:
                with self.lock:
                    self.unexpected.append(f"{marker}: {exc!r}")
                continue
            with self.lock:
                if r.status_code == 202:
                    self.accepted[r.json()["id"]] = marker
                elif r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable":
                    self.refused.append(time.monotonic())
                elif r.status_code == 429:  # the queue cap may speak: not a failure
                    self.declined[r.json()["error"]["code"]] += 1
                else:
                    self.unexpected.append(f"{marker}: {r.status_code} {r.text}")
            self.stop.wait(PACE_S)

    def finish(self, *, api_url: str, headers: dict[str, str], slots: int,
               timeout_s: float = 120) -> str:
        """Stop submitting, then check what a failover may not do: a 500 or a hang, a 202'd
        prompt gone, one that never ends, one stored twice. A prompt running when Redis died
        may end failed or incomplete (its claim went with the store, or its time ran out
        while the store was away: a failover took 30 s on a loaded CI box instead of 2 s, and
        prompts running across it ended `timeout`): at most `slots` of them. Returns the line
        to print."""
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not self.unexpected, self.unexpected[:5]
        window = (max(self.refused) - min(self.refused)) if self.refused else 0.0
        with httpx.Client(base_url=api_url, headers=headers, timeout=5) as http:
            lost = [j for j in self.accepted if http.get(f"/api/jobs/{j}").status_code == 404]
            ended: Counter[str] = Counter()
            for job_id in set(self.accepted) - set(lost):
                job = self._final(http, job_id, timeout_s)
                ended[job["status"] + (f"/{job['error']['code']}" if job["error"] else "")] += 1
            for client in range(len(self.threads)):
                turns = http.get(f"/api/conversations/ha-client-{client}/messages").json()["turns"]
                asked = [t["user"]["text"] for t in turns]
                assert len(asked) == len(set(asked)), f"a prompt stored twice: {asked}"
        line = (f"{len(self.threads)} clients, {len(self.accepted)} prompts accepted (202), "
                f"{len(self.refused)} refused 503 over {window:.1f} s; {len(lost)} accepted "
                f"and lost; ends: {sorted(ended.items())}; 429s: {dict(self.declined)}")
        assert not lost, line
        assert ended["completed"] >= sum(ended.values()) - slots, line
        assert {e.split("/")[0] for e in ended} <= {"completed", "failed", "incomplete"}, line
        assert {e.partition("/")[2] for e in ended} <= {"", "worker_lost", "store_unavailable",
                                                      "timeout"}, line
        return line

    @staticmethod
    def _final(http: httpx.Client, job_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job: dict[str, Any] = http.get(f"/api/jobs/{job_id}").json()
            if job["status"] not in ("queued", "in_progress"):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
            time.sleep(0.1)
