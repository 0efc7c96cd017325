"""The scaled stack that tests/compose/test_scaled.py, test_tls.py and test_redis_tls.py share:
docker-compose.yml + docker-compose.scale.yml + docker-compose.tls.yml +
docker-compose.redis-tls.yml with the profile monitoring, a production combination (nginx in
front of two API replicas and two chat workers, TLS on the proxy, Redis over TLS only, Flower),
brought up once for the three (tests/compose/conftest.py): each up and down of a project
costs the 2-core box tens of seconds of CPU.

The same project name and image tag as test_stack.py, so that the image built by either is the
other's cache and no untagged copy is left behind (the modules run one after the other).
Tokens mode: one person per test, from a tokens file handed over as a Docker secret, so that
each test's prompts count against its own rate limit. One CA made for the run signs the
proxy's certificate and Redis's. A test that stops or kills a service starts it again before
it ends (`Scaled.all_up`): the tests after it, of any of the three modules, need it.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from mysisterdb.redis_server import free_port
from tests.compose.test_stack import (
    CHECKOUT_ID,
    COMPOSE_FILE,
    FINAL,
    UP_TIMEOUT_S,
    Compose,
    compose_env,
    need_docker,
)
from tests.procs import ROOT
from tests.tls_relay import issue, make_authority

OVERRIDES = tuple(ROOT / f"docker-compose.{name}.yml" for name in ("scale", "tls", "redis-tls"))
REPLICAS = 2
RATE_LIMIT = 10  # per person and minute: a person's prompts land on both replicas
QUEUE_DEPTH = 14  # above RATE_LIMIT: a burst of one person meets the rate limit first
OPERATOR = "scaled-operator-token-" + "o" * 24
PEOPLE = ("follow", "cancel", "limit", "limit2", "queue1", "queue2", "session", "metrics",
          "outbox1", "outbox2", "outbox3", "outbox4", "tls", "redis-tls", "remote")
# A test subnet of its own per checkout (10.x is outside Docker's default address pools).
EDGE_NET = f"10.213.{int(CHECKOUT_ID[:2], 16)}"
# Redis's TLS files in the container (docker-compose.redis-tls.yml): redis-cli there needs them.
REDIS_CLI = ('REDISCLI_AUTH="$(cat /run/mysisterdb/redis.password)" redis-cli --tls '
             '--cacert /run/redis-tls/ca.crt "$@"')


def token(person: str) -> str:
    return f"scaled-{person}-token-" + "t" * 20


def bearer(person: str | None) -> dict[str, str]:
    if person is None:  # a session cookie instead
        return {}
    return {"Authorization": f"Bearer {OPERATOR if person == 'operator' else token(person)}"}


def replica(r: httpx.Response) -> str:
    """The replica's address (`X-Upstream`, ip:port; after a failover `a, b`: the last)."""
    upstream = r.headers.get("x-upstream", "")
    assert upstream, f"no X-Upstream header: {dict(r.headers)}"
    return upstream.split(",")[-1].strip().rsplit(":", 1)[0]


@dataclass
class Scaled:
    stack: Compose
    https_url: str
    trust: ssl.SSLContext  # trusts the run's CA only
    redis_ca: Path  # on the host, for a worker on "another host"
    redis_password: str
    redis_port: int  # Redis's published TLS port
    flower_url: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def url(self) -> str:
        """The proxy's plain http port (loopback)."""
        return self.stack.api_url

    def call(self, method: str, path: str, person: str | None, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(person), **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def api_containers(self) -> dict[str, str]:
        """address on the edge network -> container id, of the running API replicas."""
        ids = self.stack.run("ps", "-q", "api").stdout.split()
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{.Id}} {{range $k, $v := .NetworkSettings.Networks}}"
             "{{if eq $k \"" + self.stack.project + "_edge\"}}{{$v.IPAddress}}{{end}}{{end}}",
             *ids], capture_output=True, text=True, timeout=30, check=True).stdout
        return {ip: cid for cid, ip in (line.split() for line in out.splitlines() if " " in line)}

    def upstreams_answering(self, method: str, path: str, person: str | None,
                            **kwargs: Any) -> dict[str, httpx.Response]:
        """Ask until every running replica has answered once: replica address -> answer."""
        answers: dict[str, httpx.Response] = {}

        def all_answered() -> bool:
            r = self.call(method, path, person, **kwargs)
            answers[replica(r)] = r
            return len(answers) >= REPLICAS
        self.stack.wait(all_answered, what=f"both replicas to answer {path}", timeout_s=60)
        return answers

    def submit(self, person: str, message: str, conversation: str, *,
               expect: int = 202) -> httpx.Response:
        r = self.call("POST", "/api/chat", person,
                      json={"message": message, "conversation_id": conversation})
        assert r.status_code == expect, (r.status_code, r.text)
        return r

    def job(self, person: str, job_id: str) -> dict[str, Any]:
        r = self.call("GET", f"/api/jobs/{job_id}", person)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait_status(self, person: str, job_id: str, *statuses: str,
                    timeout_s: float = 60) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.job(person, job_id))
            return seen["status"] in statuses
        self.stack.wait(reached, what=f"job {job_id} {statuses}", timeout_s=timeout_s)
        return seen

    def chat(self, person: str, message: str, conversation: str) -> dict[str, Any]:
        job_id = self.submit(person, message, conversation).json()["id"]
        job = self.wait_status(person, job_id, *FINAL)
        assert job["status"] == "completed", job
        return job

    def redis(self, *command: str) -> str:
        return self.stack.run("exec", "-T", "redis", "sh", "-c", REDIS_CLI, "redis-cli",
                              *command).stdout.strip()

    def logs(self, service: str) -> str:
        return self.stack.run("logs", "--no-color", service).stdout

    def simulator(self, method: str, path: str) -> str:
        """The simulator is not published: ask it from inside its own container."""
        code = ("import sys, urllib.request as u; r = u.Request('http://127.0.0.1:8765' + "
                "sys.argv[2], method=sys.argv[1]); print(u.urlopen(r, timeout=5).read().decode())")
        return self.stack.run("exec", "-T", "simulator", "python", "-c", code,
                              method, path).stdout.strip()

    def active_tasks(self) -> dict[str, list[str]] | None:
        """Celery's own view: each chat worker node -> ids of the tasks it runs now; None
        when the question got no answer (an `exec` on a busy engine can fail: asked again
        by the waits, never read as "nothing runs")."""
        done = self.stack.run("exec", "-T", "--index", "1", "worker", "celery", "-A",
                              "workers.celery_app", "inspect", "active", "--json",
                              "--timeout", "5", check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            print(f"inspect active: no answer (exit {done.returncode}): {done.stderr[-300:]}")
            return None
        replies = json.loads(lines[-1])
        return {node: [t["id"] for t in tasks] for node, tasks in replies.items()
                if node.startswith("celery@")}

    def all_up(self) -> None:
        """After a test stopped or killed a service: every one runs and is healthy again, and
        the proxy reaches both API replicas."""
        self.stack.run("up", "-d", "--wait", "--no-build", "--scale", f"api={REPLICAS}",
                       "--scale", f"worker={REPLICAS}", timeout_s=UP_TIMEOUT_S)
        self.upstreams_answering("GET", "/api/current-time", "operator")


def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """One CA for the run: (the folder docker-compose.redis-tls.yml wants, ca.crt, redis.crt,
    redis.key in it; the proxy's certificate; its key), each naming 127.0.0.1 and localhost."""
    redis_tls = folder / "redis-tls"
    redis_tls.mkdir()
    ca = make_authority(redis_tls, "ca")
    ca.cert_path.rename(redis_tls / "ca.crt")
    (redis_tls / "ca.crt").chmod(0o644)  # api, workers and flower run as other users
    cert, _ = issue(ca, redis_tls, "redis", server=True, dns_names=("redis", "localhost"))
    cert.rename(redis_tls / "redis.crt")
    # The proxy's key stays 0600, as a real key should: nginx's master process (root) reads it.
    proxy_cert, proxy_key = issue(ca, folder, "proxy", server=True)
    return redis_tls, proxy_cert, proxy_key


@contextmanager
def scaled_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    """Up (down first: what an interrupted run left), yielded, down with its volumes."""
    need_docker()
    folder = tmp_path_factory.mktemp("scaled")
    env_file = folder / "empty.env"
    env_file.write_text("")
    # The people's tokens and the operator's, as secrets/README.md says: files, handed over
    # as Docker secrets (0644: the api runs as uid 10001; the folder keeps others out).
    tokens, operator = folder / "api_tokens", folder / "operator_token"
    tokens.write_text("".join(f"{p}:{token(p)}\n" for p in PEOPLE))
    operator.write_text(OPERATOR + "\n")
    for f in (tokens, operator):
        f.chmod(0o644)
    redis_tls, proxy_cert, proxy_key = certificates(folder)
    password = secrets.token_hex(16)
    proxy_port, tls_port, redis_port, flower_port = (free_port() for _ in range(4))
    env = {**compose_env(free_port(), flower_port),
           # Every command of the project sees Flower (`down` included).
           "COMPOSE_PROFILES": "monitoring",
           "MYSISTERDB_PROXY_HOST_PORT": str(proxy_port), "MYSISTERDB_EDGE_NET": EDGE_NET,
           "MYSISTERDB_TLS_HOST_PORT": str(tls_port),
           "MYSISTERDB_TLS_CERT_FILE": str(proxy_cert), "MYSISTERDB_TLS_KEY_FILE": str(proxy_key),
           "MYSISTERDB_REDIS_TLS_DIR": str(redis_tls),
           "MYSISTERDB_REDIS_TLS_HOST_PORT": str(redis_port),
           "MYSISTERDB_REDIS_PASSWORD": password,
           "MYSISTERDB_API_TOKENS_FILE": str(tokens),
           "MYSISTERDB_OPERATOR_TOKEN_FILE": str(operator),
           "MYSISTERDB_RATE_LIMIT": f"{RATE_LIMIT}/minute",
           "MYSISTERDB_MAX_QUEUE_DEPTH": str(QUEUE_DEPTH)}
    stack = Compose(project=f"mysisterdb-scaled-test-{CHECKOUT_ID}", env=env, env_file=env_file,
                    api_url=f"http://127.0.0.1:{proxy_port}", files=(COMPOSE_FILE, *OVERRIDES))
    scaled = Scaled(stack, https_url=f"https://127.0.0.1:{tls_port}",
                    trust=ssl.create_default_context(cafile=str(redis_tls / "ca.crt")),
                    redis_ca=redis_tls / "ca.crt", redis_password=password,
                    redis_port=redis_port, flower_url=f"http://127.0.0.1:{flower_port}")
    try:
        stack.run("down", "-v", "--remove-orphans")
        stack.run("up", "-d", "--build", "--wait", "--scale", f"api={REPLICAS}",
                  "--scale", f"worker={REPLICAS}", timeout_s=UP_TIMEOUT_S)
        yield scaled
    finally:
        scaled.http.close()
        stack.run("down", "-v", "--remove-orphans", check=False)
