"""A Redis primary, a replica and three Sentinels on loopback, for the tests: the bundled
Valkey in each role (`valkey-server … --sentinel` is its Sentinel), with a password, quick
failure detection (down after 1 s) and configuration files in a folder of the test's own
(Sentinels rewrite theirs)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from mysisterdb.redis_server import free_port, redis_server_binary
from tests.procs import wait_for

MASTER = "mymaster"


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

