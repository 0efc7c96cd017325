"""The compose stack, for real: the README's commands against a Docker engine.

One stack for the module: free host ports, an empty env file (a developer's `.env` or
GEMINI_API_KEY cannot turn it into a Gemini stack), and a project name and image tag
(MYSISTERDB_IMAGE_TAG) of this checkout's own, so it never touches the `mysisterdb` project
and two checkouts on one engine never run each other's code. Both stay the same from run to
run: compose labels the image it builds with the project name, so a new name per run would
leave an untagged copy of the image behind every time. The image stays after the test as
the build cache of the next run; containers and volumes go (`down -v`, also before `up`, for
what an interrupted run left). The compose file is used as it is.

Without Docker + Compose v2 the module is skipped with the reason; CI (`.ci/run`) prepares
Docker and sets MYSISTERDB_TEST_REQUIRE_DOCKER=1, which turns that skip into a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mysisterdb.redis_server import free_port
from tests.procs import ROOT, wait_for

COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRE_DOCKER = "MYSISTERDB_TEST_REQUIRE_DOCKER"
UP_TIMEOUT_S = 900  # a cold build installs every dependency
# A check that runs a docker command (`compose exec`, `inspect`) costs the CLI's start and the
# engine's work, ~0.2-0.8 s of CPU on a 2-core box: asked once a second, not four times.
EXEC_POLL_S = 1.0
COMMAND_TIMEOUT_S = 180
FINAL = ("completed", "failed", "cancelled", "incomplete")

pytestmark = pytest.mark.timeout(UP_TIMEOUT_S + 300)

# The worker's main process: the child of the container's init (docker-init, PID 1);
# `mysisterdb worker` execs `python -m workers`, so its argv names "workers".
# Killed from inside the container with SIGKILL, as a crash would: Docker sees the container
# exit on its own and applies the restart policy (`docker kill` would count as a manual stop).
KILL_WORKER_MAIN = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    with open(f"/proc/{pid}/stat") as f:
        ppid = f.read().rsplit(")", 1)[1].split()[1]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\\0")
    if ppid == "1" and b"workers" in argv:
        print(pid, flush=True)
        os.kill(int(pid), signal.SIGKILL)
"""


def docker_missing() -> str | None:
    """Why the stack cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30, check=False)
        if info.returncode != 0:
            return f"the Docker engine does not answer: {info.stderr.strip()[-300:]}"
        version = subprocess.run(["docker", "compose", "version", "--short"],
                                 capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired as exc:
        return f"`{' '.join(map(str, exc.cmd))}` did not answer within {exc.timeout} s"
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if version.returncode != 0 or not major.isdigit() or int(major) < 2:
        return "Docker Compose v2 (`docker compose`) is not installed"
    return None


def need_docker() -> None:
    """Skip without Docker + Compose v2; fail instead when CI requires them."""
    reason = docker_missing()
    if reason:
        if os.environ.get(REQUIRE_DOCKER) == "1":
            pytest.fail(f"{REQUIRE_DOCKER}=1 but Docker cannot run the stack: {reason}")
        pytest.skip(f"compose stack not tested: {reason} (needs a Docker engine with "
                    f"Compose v2; CI prepares one with ../shared/tools/docker-standins)")


def quick_health(files: tuple[Path, ...]) -> list[Path]:
    """The test overrides that run the stack's healthchecks sooner (the checks themselves are
    the production ones; only how soon `up --wait` sees them pass changes)."""
    here, names = Path(__file__).parent, {f.name for f in files}
    extra = {"docker-compose.scale.yml": "quick-health.proxy.yml",
             "docker-compose.ha.yml": "quick-health.ha.yml"}
    return [here / "quick-health.yml", *(here / q for f, q in extra.items() if f in names)]


@dataclass
class Compose:
    project: str
    env: dict[str, str]
    env_file: Path
    api_url: str
    token: str = ""  # the API's generated token (`mysisterdb token` in its container)
    files: tuple[Path, ...] = (COMPOSE_FILE,)  # the scaled stack adds its override

    def run(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [*self.files, *quick_health(self.files)]
        argv = ["docker", "compose", *(a for f in files for a in ("-f", str(f))),
                "--env-file", str(self.env_file), "-p", self.project, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env=self.env, cwd=ROOT, check=False)
        if check and done.returncode != 0:
            self.print_diagnostics()
            raise AssertionError(f"`{' '.join(argv)}` exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def up(self) -> None:
        """The README's command, then the README's way to get the token."""
        self.run("up", "-d", "--build", "--wait", timeout_s=UP_TIMEOUT_S)
        self.token = self.run("exec", "-T", "api", "mysisterdb", "token").stdout.strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def inspect(self, service: str, template: str) -> str:
        container = self.run("ps", "-a", "-q", service).stdout.strip()
        assert container, f"no container for {service}"
        return subprocess.run(["docker", "inspect", "-f", template, container],
                              capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    def mounted_volumes(self) -> set[str]:
        """Every volume a container of the project mounts, anonymous ones included."""
        containers = self.run("ps", "-a", "-q").stdout.split()
        if not containers:
            return set()
        names = subprocess.run(
            ["docker", "inspect", "-f",
             '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}', *containers],
            capture_output=True, text=True, timeout=30, check=True).stdout.split()
        return set(names)

    def wait(self, check: Callable[[], bool], *, what: str, timeout_s: float = 60,
             interval_s: float = 0.25) -> None:
        began = time.monotonic()
        try:
            wait_for(check, timeout_s=timeout_s, what=what, interval_s=interval_s)
        except TimeoutError:
            self.print_diagnostics()
            raise
        finally:  # where a compose test's minutes go, in its captured output
            print(f"{time.strftime('%H:%M:%S')} waited {time.monotonic() - began:.1f} s "
                  f"for {what}")

    def print_diagnostics(self) -> None:
        for args in (["ps", "-a"], ["logs", "--no-color", "--tail", "40"]):
            done = self.run(*args, check=False)
            print(f"--- docker compose {' '.join(args)} ---\n{done.stdout}{done.stderr}")

    # -- the API, from the host -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        # With the token: the generated one is also the operator's, who sees the details.
        return httpx.get(f"{self.api_url}/api/health", headers=self.auth,  # type: ignore[no-any-return]
                         timeout=5).json()

    def submit(self, message: str, conversation_id: str) -> dict[str, Any]:
        r = httpx.post(f"{self.api_url}/api/chat", timeout=10, headers=self.auth,
                       json={"message": message, "conversation_id": conversation_id})
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.api_url}/api/jobs/{job_id}", timeout=5, headers=self.auth)
        return r.json() if r.status_code == 200 else None

    def wait_job(self, job_id: str, *, timeout_s: float = 60) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def final() -> bool:
            job = self.job(job_id)
            seen[:] = [job] if job else []
            return job is not None and job["status"] in FINAL
        self.wait(final, what=f"job {job_id} to end", timeout_s=timeout_s)
        return seen[0]

    def texts(self, conversation_id: str) -> list[str] | None:
        r = httpx.get(f"{self.api_url}/api/conversations/{conversation_id}/messages",
                      timeout=5, headers=self.auth)
        if r.status_code != 200:
            return None
        return [m["text"] for t in r.json()["turns"] for m in (t["user"], t["reply"]) if m]

    def chat(self, message: str, conversation_id: str) -> dict[str, Any]:
        job = self.wait_job(self.submit(message, conversation_id)["id"])
        assert job["status"] == "completed", job
        return job


CHECKOUT_ID = hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]


OPERATOR = "compose-operator-token-" + "o" * 24


def compose_env(api_port: int, flower_port: int) -> dict[str, str]:
    # Nothing of the caller's MySisterDB, Compose or Gemini settings leaks into the stack.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MYSISTERDB_", "COMPOSE_"))
           and k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update({
        "MYSISTERDB_API_HOST_PORT": str(api_port),
        "MYSISTERDB_FLOWER_HOST_PORT": str(flower_port),
        "MYSISTERDB_IMAGE_TAG": f"test-{CHECKOUT_ID}",
    })
    return env


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    need_docker()
    folder = tmp_path_factory.mktemp("compose")
    env_file = folder / "empty.env"
    env_file.write_text("")
    # The operator token as the README says: a file, handed over as a Docker secret.
    operator = folder / "operator_token"
    operator.write_text(OPERATOR + "\n")
    operator.chmod(0o644)  # the api runs as uid 10001; the folder keeps others out
    api_port = free_port()
    env = {**compose_env(api_port, free_port()),
           "MYSISTERDB_OPERATOR_TOKEN_FILE": str(operator)}
    stack = Compose(project=f"mysisterdb-test-{CHECKOUT_ID}", env=env, env_file=env_file,
                    api_url=f"http://127.0.0.1:{api_port}")
    try:
        stack.run("down", "-v", "--remove-orphans")
        stack.up()
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)


def test_plain_up_answers_a_chat_from_the_simulator(compose: Compose) -> None:
    compose.wait(lambda: compose.health()["status"] == "ok", what="health ok")
    health = compose.health()
    assert health["llm"]["mode"] == "simulator" and health["llm"]["ok"] is True, health
    assert health["llm"]["endpoint"].startswith("http://simulator:8765/")
    job = compose.chat("枡元といえば？ｗ", "compose-first")
    assert "お兄ちゃん" in job["reply"] and "枡元といえば？ｗ" in job["reply"]


def test_plain_up_is_locked_a_token_for_the_api_and_a_password_for_redis(
        compose: Compose) -> None:
    assert len(compose.token) >= 32
    assert "/signin#token=" + compose.token in compose.run("logs", "api").stdout
    assert httpx.get(f"{compose.api_url}/api/conversations", timeout=5).status_code == 401
    assert httpx.get(f"{compose.api_url}/api/conversations", headers=compose.auth,
                     timeout=5).status_code == 200
    refused = compose.run("exec", "-T", "redis", "redis-cli", "ping", check=False)
    assert "NOAUTH" in refused.stdout + refused.stderr
    mode = compose.run("exec", "-T", "api", "stat", "-c", "%a", "/app/data/api-token").stdout
    assert mode.strip() == "600"


def test_secrets_come_as_files_and_docker_inspect_shows_none(compose: Compose) -> None:
    queue = httpx.get(f"{compose.api_url}/api/queue", timeout=5,
                      headers={"Authorization": f"Bearer {OPERATOR}"})
    assert queue.status_code == 200, queue.text  # the secret reached the api
    for service in ("api", "worker", "summary-worker"):
        shown = compose.inspect(service, "{{json .}}")
        assert OPERATOR not in shown and compose.token not in shown, service
        env = compose.inspect(service, "{{json .Config.Env}}")
        assert "GEMINI_API_KEY_FILE=/run/secrets/gemini_api_key" in env, service
        assert '"GEMINI_API_KEY=' not in env and "MYSISTERDB_OPERATOR_TOKEN=" not in env
    # A later start does not print the token again (the first one did, above).
    compose.run("restart", "api")
    compose.wait(lambda: httpx.get(f"{compose.api_url}/api/current-time",
                                   timeout=2).status_code == 200, what="api after restart")
    assert compose.run("logs", "api").stdout.count(compose.token) == 1


def test_a_crashed_worker_is_restarted_and_serves_again(compose: Compose) -> None:
    # One `inspect` a question (each is two docker commands): restarts, running, started at.
    state = "{{.RestartCount}} {{.State.Running}} {{.State.StartedAt}}"
    restarts, _, started = compose.inspect("worker", state).split()
    # The exec dies with the container, so its exit status says nothing; the restart does.
    kill = compose.run("exec", "-T", "worker", "python", "-c", KILL_WORKER_MAIN, check=False)
    print(f"killed worker main process: {kill.stdout.strip()!r} (exec exit {kill.returncode})")

    def restarted() -> bool:
        count, running, started_at = compose.inspect("worker", state).split()
        return int(count) > int(restarts) and running == "true" and started_at != started
    compose.wait(restarted, what="the restart policy to start the worker again",
                 interval_s=EXEC_POLL_S)
    job = compose.chat("生き返った？", "compose-crash")
    assert job["reply"]


def test_redis_killed_and_started_keeps_history_and_queued_jobs(compose: Compose) -> None:
    conv = "compose-redis"
    before = compose.chat("覚えててね", conv)
    compose.run("stop", "worker")  # so the next prompt stays queued
    try:
        redis_killed_and_started(compose, conv, before)
    finally:  # the tests after this one need a worker, whatever happened here
        compose.run("start", "worker", check=False)


def redis_killed_and_started(compose: Compose, conv: str, before: dict[str, Any]) -> None:
    queued = compose.submit("まだ待ってる？", conv)
    assert compose.job(queued["id"])["status"] == "queued"  # type: ignore[index]

    # AOF: the broker message is in the append-only file before redis dies.
    def in_aof() -> bool:
        done = compose.run("exec", "-T", "redis", "sh", "-c",
                           f"cat /data/appendonlydir/*.aof* /data/*.aof 2>/dev/null "
                           f"| grep -c {queued['id']}", check=False)
        return done.stdout.strip() not in ("", "0")
    compose.wait(in_aof, what="the queued job in the AOF", interval_s=EXEC_POLL_S)
    # SIGKILL: no shutdown save, so only the AOF can bring the data back.  A kill is a
    # manual stop for Docker, hence the explicit start.
    compose.run("kill", "-s", "KILL", "redis")
    compose.run("start", "redis")
    # A request may still meet the restart (503) after one got through (seen under CI's
    # load): the history is waited for, and only the whole of it passes.
    kept = ["覚えててね", before["reply"], "まだ待ってる？"]
    compose.wait(lambda: compose.texts(conv) == kept, what="the history back with redis")
    compose.wait(lambda: (compose.job(queued["id"]) or {}).get("status") == "queued",
                 what="the queued job back, still queued")

    compose.run("start", "worker")
    done = compose.wait_job(queued["id"])
    assert done["status"] == "completed", done
    assert compose.texts(conv) == ["覚えててね", before["reply"], "まだ待ってる？", done["reply"]]


def test_down_then_up_keeps_history_and_down_v_removes_it(compose: Compose) -> None:
    conv = "compose-down"
    job = compose.chat("また会おうね", conv)
    volumes = compose.mounted_volumes()
    compose.run("down")
    compose.up()
    assert compose.texts(conv) == ["また会おうね", job["reply"]]
    compose.wait(lambda: compose.health()["status"] == "ok", what="health ok after up")
    volumes |= compose.mounted_volumes()

    compose.run("down", "-v")
    existing = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.split()
    # Named and anonymous: nothing the stack ever mounted may outlive `down -v`. (The stack
    # stays down: tests/conftest.py runs this test last in its module.)
    assert volumes and not volumes & set(existing), volumes & set(existing)
