"""Start and stop the real processes the tests talk to (simulator, worker, API)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def mysisterdb(*args: str) -> list[str]:
    return [sys.executable, "-m", "mysisterdb", *args]


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        self.terminate()
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        # The worker's pool children live in its process group: take them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=5)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start(name: str, argv: list[str], *, env: dict[str, str], log_dir: Path,
          cwd: Path = ROOT) -> Proc:
    log_path = log_dir / f"{name}.out"
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Proc(name=name, process=process, log_path=log_path)


def start_ready(name: str, argv: list[str], *, env: dict[str, str], log_dir: Path,
                ready_url: str, timeout_s: float = 20.0) -> Proc:
    """Start a server and wait until `ready_url` answers; if it never does, its log is
    printed and it is stopped (a test never leaves it behind)."""
    proc = start(name, argv, env=env, log_dir=log_dir)
    try:
        wait_for(http_ok(ready_url), timeout_s=timeout_s, what=name)
    except BaseException:
        print(f"--- {name} ---\n{proc.log()[-3000:]}")
        proc.stop()
        raise
    return proc


def start_api(env: dict[str, str], *, log_dir: Path, name: str = "api") -> tuple[Proc, str]:
    """An API process on MYSISTERDB_PORT of `env`, ready: (process, base URL)."""
    url = f"http://127.0.0.1:{env['MYSISTERDB_PORT']}"
    return start_ready(name, mysisterdb("api"), env=env, log_dir=log_dir,
                       ready_url=f"{url}/api/current-time"), url


def wait_for(check: Callable[[], bool], *, timeout_s: float, what: str,
             interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=1.0).status_code < 500


# A long-poll's wait: a job's reaping (a dead worker's job ended) happens when it is read,
# so a wait that sees no change still reads the job once a second.
LONG_POLL_S = 1.0


@dataclass
class Stack:
    """A running API + worker + simulator against one Redis database."""

    api_url: str
    sim_url: str
    redis_url: str
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=5.0)

    def submit(self, message: str, *, conversation_id: str = "default",
               headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = httpx.post(f"{self.api_url}/api/chat", timeout=5.0, headers=headers,
                              json={"message": message, "conversation_id": conversation_id})
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.api_url}/api/jobs/{job_id}", timeout=5.0)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_job(self, job_id: str, *, timeout_s: float = 20.0,
                 until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        until = until or (lambda j: j["status"] not in ("queued", "in_progress"))
        deadline = time.monotonic() + timeout_s
        job = self.job(job_id)
        while not until(job):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} still {job['status']}: {job}")
            if job["status"] in ("queued", "in_progress"):
                job = self.next_change(job, wait_s=min(left, LONG_POLL_S))
            else:  # a final job's long-poll answers at once: no spinning on it
                time.sleep(0.05)
                job = self.job(job_id)
        return job

    def next_change(self, job: dict[str, Any], *, wait_s: float) -> dict[str, Any]:
        """The job at its next change, or as it is after `wait_s`: a long-poll, as a client
        follows a job. Polling every 50 ms cost the suite a request (~4 ms of CPU between
        client, API and Redis) twenty times a second for each wait."""
        response = httpx.get(f"{self.api_url}/api/jobs/{job['id']}", timeout=wait_s + 5.0,
                             params={"wait": wait_s, "after": job["sequence"]})
        if response.status_code == 429:  # the person's followers are all taken: read
            time.sleep(0.05)
            return self.job(job["id"])
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def sim_requests(self) -> list[Any]:
        return httpx.get(f"{self.sim_url}/_sim/requests", timeout=5.0).json()  # type: ignore[no-any-return]

    def sim_requests_containing(self, marker: str) -> list[Any]:
        return [r for r in self.sim_requests() if marker in str(r)]

    def sim_requests_asking(self, marker: str) -> list[Any]:
        """Requests whose new message (the last content) contains marker, not its history."""
        return [r for r in self.sim_requests()
                if isinstance(r, dict) and r.get("contents")
                and marker in str(r["contents"][-1])]

    def stop(self) -> None:
        """All asked to stop at once, then each waited for: their graceful shutdowns overlap."""
        procs = [self.procs[name] for name in ("api", "worker", "summary-worker", "simulator")
                 if name in self.procs]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop()


def followers(stack: Stack) -> int:
    """Long-polls and event streams the API has waiting on a job (its /metrics gauge)."""
    text = httpx.get(f"{stack.api_url}/metrics", timeout=5).text
    [line] = [ln for ln in text.splitlines() if ln.startswith("mysisterdb_job_followers ")]
    return int(float(line.split()[1]))
