"""`mysisterdb up`: start, supervise and cleanly stop the whole stack on one machine.

Children: a private redis-server (when MYSISTERDB_REDIS_URL is unset), the Gemini simulator
(when no API key is set), two Celery workers (prefork): the chat worker, whose pool follows the
load, and the summary worker with its own small pool, so that summaries never take a chat
slot; and the API. A child that dies is
restarted with backoff. Ctrl+C (or SIGTERM) stops them in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.files import secret_in_file, write_private
from core.orphan import SUPERVISOR_PID_ENV
from core.settings import Settings
from mysisterdb.redis_server import (
    RedisServer,
    free_port,
    password_config,
    redis_args,
    wait_until_ready,
)

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
Notify = Callable[[str, str, str], None]  # (child name, cause, action)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0
    ready: Callable[[Child], None] | None = field(default=None, repr=False)
    stop_timeout_s: float = STOP_TIMEOUT_S

    def start(self) -> None:
        # Own process group: a forced stop can take the worker's pool children with it.
        # Parent-death signal: if `up` itself is killed, its children do not live on.
        self.process = subprocess.Popen(self.argv, env=self.env, start_new_session=True,
                                        preexec_fn=die_with_parent)
        self.started_at = time.monotonic()
        logger.info("started %s (pid %s)", self.name, self.process.pid)
        if self.ready:
            self.ready(self)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        timeout_s = self.stop_timeout_s
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing its process group", self.name,
                           timeout_s)
            kill_group(proc.pid)
            proc.wait(timeout=5)


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the supervisor dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def self_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mysisterdb", *args]


def plan_children(settings: Settings, env: dict[str, str]) -> list[Child]:
    """The children to run, in start order; fills env with the URLs they share."""
    children: list[Child] = []
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    if not settings.redis_url:
        port = free_port()
        # Locked: a password generated once, kept 0600 beside the data (in the URL handed to
        # the children through their environment, never in anyone's arguments).
        password = secret_in_file(settings.redis_password_path)
        env["MYSISTERDB_REDIS_URL"] = f"redis://:{password}@127.0.0.1:{port}/0"
        config = password_config(Path(settings.data_dir) / "redis.conf", password)
        args = redis_args(port=port, host="127.0.0.1", data_dir=Path(settings.data_dir),
                          logfile=Path(settings.log_dir) / "redis.log", config=config,
                          binary=settings.redis_server,
                          appendfsync=settings.redis_appendfsync)
        children.append(Child("redis", args, env, ready=wait_for_redis(port, password)))
    if settings.uses_simulator and not settings.gemini_endpoint:
        env["MYSISTERDB_GEMINI_ENDPOINT"] = f"http://127.0.0.1:{settings.sim_port}"
        children.append(Child("simulator", self_command("simulator"), env))
    # Warm shutdown: let a running prompt finish (it cannot outlive its hard limit).
    children.append(Child("worker", self_command("worker", "--role", "chat"), env,
                          stop_timeout_s=settings.task_time_limit + 5))
    children.append(Child("summary-worker", self_command("worker", "--role", "summary"), env,
                          stop_timeout_s=settings.summary_time_limit + 5))
    children.append(Child("api", self_command("api"), env))
    return children


def wait_for_redis(port: int, password: str) -> Callable[[Child], None]:
    def ready(child: Child) -> None:
        assert child.process is not None
        wait_until_ready(RedisServer(child.process, "127.0.0.1", port, password), timeout_s=10)

    return ready


class Supervisor:
    def __init__(self, children: list[Child], *, notify: Notify | None = None,
                 ready_url: str | None = None,
                 tick: Callable[[], None] | None = None) -> None:
        self.children = children
        self.stopping = False
        self.notify = notify
        self.tick = tick  # called every loop (writes the restarts Redis could not take yet)
        self.ready_url = ready_url  # announced once it answers

    def announce_when_ready(self) -> None:
        if self.ready_url is None:
            return
        try:
            answered = httpx.get(f"{self.ready_url}/api/current-time", timeout=0.5).is_success
        except httpx.HTTPError:
            return
        if answered:
            print(f"MySisterDB is ready: {self.ready_url}  (chat page: {self.ready_url}/)",
                  flush=True)
            self.ready_url = None

    def request_stop(self, *_: object) -> None:
        if self.stopping:  # a second Ctrl+C: do not wait for running prompts
            logger.warning("second stop request: killing every child now")
            for child in self.children:
                if child.alive() and child.process is not None:
                    kill_group(child.process.pid)
        self.stopping = True

    def run(self) -> None:
        for child in self.children:
            child.start()
        while not self.stopping:
            time.sleep(0.5)
            for child in self.children:
                self.tend(child)
            if self.tick is not None:
                self.tick()
            self.announce_when_ready()
        self.stop_all()

    def tend(self, child: Child) -> None:
        if child.alive() or self.stopping:
            return
        now = time.monotonic()
        if child.next_start_at == 0.0:
            code = child.process.returncode if child.process else None
            if now - child.started_at > STABLE_AFTER_S:
                child.restarts = 0
            delay = min(BACKOFF_MAX_S, 2.0 ** child.restarts)
            child.next_start_at = now + delay
            logger.error("%s exited with %s; restarting in %.0f s", child.name, code, delay)
            if self.notify:
                self.notify(child.name, f"終了コード {code}",
                            f"mysisterdb up が {delay:.0f} 秒後に再起動した")
            return
        if now >= child.next_start_at:
            child.restarts += 1
            child.next_start_at = 0.0
            child.start()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            logger.info("stopping %s", child.name)
            child.stop()


@dataclass
class RestartRecorder:
    """Every restart into the incident table. Redis may be what died (or be down for other
    reasons): a restart it cannot take is kept and written once it answers again, with the
    time it happened. `notify` queues and tries; `flush` (each supervisor loop) retries."""

    redis_url: str | None
    pending: list[tuple[str, str, str, str]] = field(default_factory=list)
    _warned: bool = False

    def notify(self, name: str, cause: str, action: str) -> None:
        from core.models import iso, utcnow

        self.pending.append((iso(utcnow()) or "", name, cause, action))
        self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from core.incidents import Incident, IncidentLog
        from core.redis_client import connect

        client = connect(self.redis_url, timeout_s=0.5)  # the loop must go on tending
        try:
            log = IncidentLog(client)
            while self.pending:
                at, name, cause, action = self.pending[0]
                log.record(Incident(at=at, kind="process_exit", job_id=None,
                                    conversation_id=None, step=name, input="", cause=cause,
                                    action=action))
                self.pending.pop(0)
                logger.info("restart of %s recorded as an incident", name)
        except Exception as exc:
            if not self._warned:
                logger.warning("restart of %s not recorded yet (%s): written when redis "
                               "answers", self.pending[0][1], type(exc).__name__)
            self._warned = True
        else:
            self._warned = False
        finally:
            client.close()


def run_stack(settings: Settings) -> None:
    env = dict(os.environ)
    children = plan_children(settings, env)
    url = f"http://{settings.host}:{settings.port}"
    recorder = RestartRecorder(env.get("MYSISTERDB_REDIS_URL"))
    supervisor = Supervisor(children, notify=recorder.notify, ready_url=url,
                            tick=recorder.flush)
    url_file = settings.redis_url_file if not settings.redis_url else None
    if url_file is not None:  # 0600: it carries the password
        write_private(url_file, env["MYSISTERDB_REDIS_URL"] + "\n")
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    mode = "offline Gemini simulator" if settings.uses_simulator else "Google Gemini"
    print(f"MySisterDB is starting at {url}  (replies from: {mode}; Ctrl+C to stop)",
          flush=True)
    try:
        supervisor.run()
    finally:
        if url_file is not None:
            url_file.unlink(missing_ok=True)
    print("MySisterDB stopped.", flush=True)
