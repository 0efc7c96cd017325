"""Redis over TLS in compose, for real: docker-compose.redis-tls.yml with a CA made for this
run, Flower included (profile monitoring). Redis listens with TLS only; the api, the workers
and Flower reach it through it; a worker on "another host" (a process on this machine,
outside compose, through the published TLS port with the password and the CA, as README's
"Workers on another host" runs one) takes the prompts while the compose chat workers are
stopped.

The stack is the one tests/compose/scaled_stack.py brings up once for this module,
test_scaled.py and test_tls.py: the redis-TLS override on top of the scaled stack (two API
replicas and two chat workers behind the proxy, TLS there too), which is how a production
stack with workers on other hosts runs it. Tokens mode: a person per test.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
import redis

from mysisterdb.redis_server import free_port
from tests.compose.scaled_stack import REPLICAS, Scaled
from tests.compose.test_stack import UP_TIMEOUT_S
from tests.conftest import stack_env
from tests.procs import Proc, mysisterdb, start, start_ready, wait_for

pytestmark = pytest.mark.timeout(UP_TIMEOUT_S + 600)


def host_url(scaled: Scaled) -> str:
    """What a worker on another host is given (here the other host is this one)."""
    return f"rediss://:{scaled.redis_password}@127.0.0.1:{scaled.redis_port}/0"


def test_the_stack_talks_to_redis_over_tls_only(scaled: Scaled) -> None:
    scaled.stack.wait(lambda: scaled.call("GET", "/api/health", "operator").json()["status"]
                      == "ok", what="health ok")
    job = scaled.chat("redis-tls", "TLS の Redis 越しに", "redis-tls-first")
    assert "TLS の Redis 越しに" in job["reply"]
    for service in ("api", "worker", "summary-worker"):
        log = scaled.logs(service)
        assert "Redis at rediss://redis:6379: TLS (ssl_cert_reqs=required)" in log, service
        assert "plaintext" not in log and scaled.redis_password not in log, service
    # The published port speaks TLS only: plaintext gets nowhere, TLS with the CA and the
    # password gets in.
    plain = redis.Redis(host="127.0.0.1", port=scaled.redis_port,
                        password=scaled.redis_password, socket_timeout=3,
                        socket_connect_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    secure = redis.Redis(host="127.0.0.1", port=scaled.redis_port, ssl=True,
                         ssl_ca_certs=str(scaled.redis_ca), password=scaled.redis_password,
                         socket_timeout=3, socket_connect_timeout=3)
    assert secure.ping()
    secure.close()


def test_flower_sees_the_workers_and_the_queues_over_tls(scaled: Scaled) -> None:
    user, _, password = scaled.stack.run(
        "exec", "-T", "flower", "cat", "/run/mysisterdb/flower.auth").stdout.strip().partition(":")
    auth = httpx.BasicAuth(user, password)
    # Its events (the URL's ssl_* query): the workers it has heard from, the chat workers
    # and the summary worker.
    scaled.stack.wait(lambda: len(httpx.get(f"{scaled.flower_url}/api/workers?refresh=1",
                                            auth=auth, timeout=15).json()) >= REPLICAS + 1,
                      what="flower to list every worker")
    # Its queue lengths, a connection of its own (deploy/flower_tls.py's broker_use_ssl), of
    # the queues the workers last told it of (each worker's answer to its periodic inspect:
    # under CI's load the chat worker's once came after the summary worker's, so asked again).
    def chat_queue_listed() -> bool:
        queues = httpx.get(f"{scaled.flower_url}/api/queues/length", auth=auth, timeout=15)
        assert queues.status_code == 200, queues.text
        if "chat" in {q["name"] for q in queues.json()["active_queues"]}:
            return True
        # Flower lists the queues its last inspect of the workers heard of (the refresh above
        # was one, ~10 s with Flower's 5 s inspect timeout): asked anew for the next look.
        httpx.get(f"{scaled.flower_url}/api/workers?refresh=1", auth=auth, timeout=15)
        return False
    scaled.stack.wait(chat_queue_listed, what="flower to list the chat queue")


def test_a_worker_on_another_host_takes_the_prompts(scaled: Scaled, tmp_path: Path) -> None:
    sim_port = free_port()
    env = stack_env(redis_url=host_url(scaled), api_port=free_port(), sim_port=sim_port,
                    log_dir=tmp_path, extra={"MYSISTERDB_REDIS_TLS_CA_FILE": str(scaled.redis_ca)})
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
        scaled.stack.run("stop", "worker")  # every chat worker replica of compose
        assert not scaled.stack.run("ps", "-q", "worker").stdout.split()
        marker = f"別のホストから-{secrets.token_hex(3)}"
        job = scaled.chat("remote", marker, "redis-tls-remote")
        assert marker in job["reply"]
        asked = httpx.get(f"{sim_url}/_sim/requests", timeout=5).json()
        assert any(marker in str(r) for r in asked), "the compose worker ran it, not ours"
        assert scaled.redis_password not in worker.log()
    finally:
        if worker is not None:
            worker.stop()
        simulator.stop()
        scaled.all_up()  # the compose chat workers again, for the tests after this one
