"""Redis over TLS in compose, for real: docker-compose.yml + docker-compose.redis-tls.yml with
a CA made for this run, Flower included (profile monitoring). Redis listens with TLS only;
the api, the workers and Flower reach it through it; a worker on "another host" (a process on
this machine, outside compose, through the published TLS port with the password and the CA,
as README's "Workers on another host" runs one) takes the prompts while the compose worker is
stopped.

A project name and image tag of its own (the image builds from the same cache), as
tests/compose/test_tls.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from mysisterdb.redis_server import free_port
from tests.compose.own import own_compose
from tests.compose.test_stack import UP_TIMEOUT_S, Compose
from tests.conftest import stack_env
from tests.procs import ROOT, Proc, mysisterdb, start, start_ready, wait_for
from tests.tls_relay import issue, make_authority

REDIS_TLS_FILE = ROOT / "docker-compose.redis-tls.yml"

pytestmark = pytest.mark.timeout(UP_TIMEOUT_S + 300)


@dataclass
class TlsStack:
    stack: Compose
    ca: Path
    password: str
    redis_port: int
    flower_url: str

    def logs(self, service: str) -> str:
        return self.stack.run("logs", "--no-color", service).stdout

    def host_url(self) -> str:
        """What a worker on another host is given (here the other host is this one)."""
        return f"rediss://:{self.password}@127.0.0.1:{self.redis_port}/0"


def certificates(folder: Path) -> Path:
    """secrets/redis-tls/ as docker-compose.redis-tls.yml wants it; returns the folder."""
    folder.mkdir()
    ca = make_authority(folder, "ca")
    ca.cert_path.rename(folder / "ca.crt")
    cert, _ = issue(ca, folder, "redis", server=True, dns_names=("redis", "localhost"))
    cert.rename(folder / "redis.crt")
    (folder / "ca.crt").chmod(0o644)  # api, workers and flower run as other users
    return folder


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    tls_dir = certificates(tmp_path_factory.mktemp("redis-tls-files") / "redis-tls")
    password = secrets.token_hex(16)
    flower_port, redis_port = free_port(), free_port()
    with own_compose(tmp_path_factory, name="redis-tls", overrides=(REDIS_TLS_FILE,),
                     profiles=("monitoring",), flower_port=flower_port,
                     env={"MYSISTERDB_REDIS_TLS_DIR": str(tls_dir),
                          "MYSISTERDB_REDIS_TLS_HOST_PORT": str(redis_port),
                          "MYSISTERDB_REDIS_PASSWORD": password}) as stack:
        yield TlsStack(stack=stack, ca=tls_dir / "ca.crt", password=password,
                       redis_port=redis_port, flower_url=f"http://127.0.0.1:{flower_port}")


def test_the_stack_talks_to_redis_over_tls_only(tls_stack: TlsStack) -> None:
    stack = tls_stack.stack
    stack.wait(lambda: stack.health()["status"] == "ok", what="health ok")
    job = stack.chat("TLS の Redis 越しに", "redis-tls-first")
    assert "TLS の Redis 越しに" in job["reply"]
    for service in ("api", "worker", "summary-worker"):
        log = tls_stack.logs(service)
        assert "Redis at rediss://redis:6379: TLS (ssl_cert_reqs=required)" in log, service
        assert "plaintext" not in log and tls_stack.password not in log, service
    # The published port speaks TLS only: plaintext gets nowhere, TLS with the CA and the
    # password gets in.
    plain = redis.Redis(host="127.0.0.1", port=tls_stack.redis_port,
                        password=tls_stack.password, socket_timeout=3, socket_connect_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    secure = redis.Redis(host="127.0.0.1", port=tls_stack.redis_port, ssl=True,
                         ssl_ca_certs=str(tls_stack.ca), password=tls_stack.password,
                         socket_timeout=3, socket_connect_timeout=3)
    assert secure.ping()
    secure.close()


def test_flower_sees_the_workers_and_the_queues_over_tls(tls_stack: TlsStack) -> None:
    user, _, password = tls_stack.stack.run(
        "exec", "-T", "flower", "cat", "/run/mysisterdb/flower.auth").stdout.strip().partition(":")
    auth = httpx.BasicAuth(user, password)
    # Its events (the URL's ssl_* query): the workers it has heard from.
    tls_stack.stack.wait(lambda: len(httpx.get(f"{tls_stack.flower_url}/api/workers?refresh=1",
                                               auth=auth, timeout=15).json()) >= 2,
                         what="flower to list both workers")
    # Its queue lengths, a connection of its own (deploy/flower_tls.py's broker_use_ssl), of
    # the queues the workers last told it of (each worker's answer to its periodic inspect:
    # under CI's load the chat worker's once came after the summary worker's, so asked again).
    def chat_queue_listed() -> bool:
        # Flower lists the queues its last inspect of the workers heard of: asked anew.
        httpx.get(f"{tls_stack.flower_url}/api/workers?refresh=1", auth=auth, timeout=15)
        queues = httpx.get(f"{tls_stack.flower_url}/api/queues/length", auth=auth, timeout=15)
        assert queues.status_code == 200, queues.text
        return "chat" in {q["name"] for q in queues.json()["active_queues"]}
    tls_stack.stack.wait(chat_queue_listed, what="flower to list the chat queue")


def test_a_worker_on_another_host_takes_the_prompts(tls_stack: TlsStack,
                                                    tmp_path: Path) -> None:
    stack = tls_stack.stack
    sim_port = free_port()
    env = stack_env(redis_url=tls_stack.host_url(), api_port=free_port(), sim_port=sim_port,
                    log_dir=tmp_path, extra={"MYSISTERDB_REDIS_TLS_CA_FILE": str(tls_stack.ca)})
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = start_ready("simulator", mysisterdb("simulator"), env=env, log_dir=tmp_path,
                            ready_url=f"{sim_url}/_sim/health")
    worker: Proc | None = None
    try:
        worker = start("remote-worker", mysisterdb("worker", "--role", "chat"), env=env,
                       log_dir=tmp_path)
        wait_for(lambda: " ready." in worker.log(), timeout_s=60,  # type: ignore[union-attr]
                 what="the other host's worker to be ready")
        assert "TLS (ssl_cert_reqs=required)" in worker.log()
        stack.run("stop", "worker")
        marker = f"別のホストから-{secrets.token_hex(3)}"
        job = stack.chat(marker, "redis-tls-remote")
        assert marker in job["reply"]
        asked = httpx.get(f"{sim_url}/_sim/requests", timeout=5).json()
        assert any(marker in str(r) for r in asked), "the compose worker ran it, not ours"
        assert tls_stack.password not in worker.log()
    finally:
        if worker is not None:
            worker.stop()
        simulator.stop()
        stack.run("start", "worker", check=False)
