"""Redis over TLS for real: a stack (API, worker, simulator) whose only way to Redis is a
rediss:// URL with a password, a CA of the run's own and a client certificate (the server asks
for one), completes a chat; a CA that did not sign the server's certificate, or no client
certificate, is refused with a sentence that says which setting to fix, and nothing is stored.

The TLS endpoint is tests/tls_relay.py in front of a Valkey of this module's own (the bundled
Valkey has no TLS built in); everything of ours on the client side is the real thing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from mysisterdb.redis_server import RedisServer, free_port, start_redis
from tests.conftest import stack_env, start_stack
from tests.procs import Proc, mysisterdb, start, start_api, wait_for
from tests.tls_relay import TLSRelay, issue, make_authority

TLS_DB = 0  # a server of this module's own


@dataclass
class TLSRedis:
    server: RedisServer
    relay: TLSRelay
    ca: Path  # the CA that signed the relay's certificate (and the client's)
    other_ca: Path  # a CA that signed nothing here
    client_cert: Path
    client_key: Path

    def url(self, *, password: bool = True) -> str:
        auth = f":{self.server.password}@" if password else ""
        return f"rediss://{auth}127.0.0.1:{self.relay.port}/{TLS_DB}"

    def plain(self) -> redis.Redis:
        """Straight to the server behind the relay: what the test checks, not what it tests."""
        return redis.Redis(host=self.server.host, port=self.server.port,
                           password=self.server.password, db=TLS_DB, socket_timeout=5)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    folder = tmp_path_factory.mktemp("tls")
    ca = make_authority(folder, "msdb-test-ca")
    other = make_authority(folder, "someone-elses-ca")
    server_cert, server_key = issue(ca, folder, "redis-server", server=True)
    client_cert, client_key = issue(ca, folder, "worker-client", server=False)
    server = start_redis(password=secrets.token_hex(16), config=folder / "redis.conf")
    relay = TLSRelay(cert=server_cert, key=server_key, upstream_port=server.port,
                     client_ca=ca.cert_path).start()
    yield TLSRedis(server=server, relay=relay, ca=ca.cert_path, other_ca=other.cert_path,
                   client_cert=client_cert, client_key=client_key)
    relay.stop()
    server.stop()


def tls_settings(tls: TLSRedis, *, ca: Path, client_cert: bool = True) -> dict[str, str]:
    env = {"MYSISTERDB_REDIS_TLS_CA_FILE": str(ca)}
    if client_cert:
        env |= {"MYSISTERDB_REDIS_TLS_CERT_FILE": str(tls.client_cert),
                "MYSISTERDB_REDIS_TLS_KEY_FILE": str(tls.client_key)}
    return env


def test_a_stack_over_rediss_completes_a_chat(tls_redis: TLSRedis,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    tls_redis.plain().flushdb()
    before = tls_redis.relay.connections
    stack = start_stack(redis_url=tls_redis.url(), log_dir=tmp_path_factory.mktemp("tls-stack"),
                        extra=tls_settings(tls_redis, ca=tls_redis.ca))
    try:
        job = stack.submit("TLS 越しに、こんにちは", conversation_id="tls-chat")
        done = stack.wait_job(job["id"], timeout_s=30)
        assert done["status"] == "completed", done
        assert done["reply"]
        # The processes' only address of Redis is the relay's: their traffic went through TLS.
        assert tls_redis.relay.connections > before
        assert tls_redis.plain().exists(f"msdb:job:{job['id']}")
        for proc in stack.procs.values():
            log = proc.log()
            assert tls_redis.server.password not in log, proc.name
            assert "plaintext" not in log, proc.name
        # Each of ours said how it reaches Redis, once, at its start.
        assert "TLS (ssl_cert_reqs=required)" in stack.procs["api"].log()
        assert "TLS (ssl_cert_reqs=required)" in stack.procs["worker"].log()
    finally:
        stack.stop()


@dataclass
class Refused:
    api: Proc
    url: str
    worker: Proc


def start_refused(tls: TLSRedis, log_dir: Path, extra: dict[str, str]) -> Refused:
    env = stack_env(redis_url=tls.url(), api_port=free_port(), sim_port=free_port(),
                    log_dir=log_dir, extra=extra)
    worker = start("worker", mysisterdb("worker", "--role", "chat"), env=env, log_dir=log_dir)
    try:
        api, url = start_api(env, log_dir=log_dir)
    except BaseException:
        worker.stop()
        raise
    return Refused(api=api, url=url, worker=worker)


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong_ca", "refused: its certificate is not trusted"),
    ("no_client_cert", "refused us over TLS"),
])
def test_tls_refused_is_said_clearly_and_stores_nothing(
        tls_redis: TLSRedis, tmp_path: Path, case: str, expected: str) -> None:
    tls_redis.plain().flushdb()
    extra = (tls_settings(tls_redis, ca=tls_redis.other_ca) if case == "wrong_ca"
             else tls_settings(tls_redis, ca=tls_redis.ca, client_cert=False))
    refused = start_refused(tls_redis, tmp_path, extra)
    try:
        for proc in (refused.api, refused.worker):
            wait_for(lambda p=proc: expected in p.log(), timeout_s=30,  # type: ignore[misc]
                     what=f"{proc.name} to say {expected!r}")
        api_log = refused.api.log()
        line = next(ln for ln in api_log.splitlines() if expected in ln)
        assert " ERROR " in line
        setting = ("MYSISTERDB_REDIS_TLS_CA_FILE" if case == "wrong_ca"
                   else "MYSISTERDB_REDIS_TLS_CERT_FILE")
        assert setting in line
        if case == "wrong_ca":
            assert str(tls_redis.other_ca) in line  # which file it used
        response = httpx.post(f"{refused.url}/api/chat", timeout=10,
                              json={"message": "届かないはず", "conversation_id": "tls-refused"})
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "store_unavailable"
        assert error["message"] and not error["message"].isascii()
        assert tls_redis.plain().dbsize() == 0  # nothing stored, nothing queued
        for proc in (refused.api, refused.worker):
            assert tls_redis.server.password not in proc.log(), proc.name
    finally:
        refused.api.stop()
        refused.worker.stop()
