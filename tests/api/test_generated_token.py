"""No token configured on a non-loopback address (a container's 0.0.0.0): the API makes one,
keeps it 0600, prints a sign-in URL carrying it the first time only (stdout ends up in
`docker compose logs`), and lets nobody in without it.

The API listens on 0.0.0.0 here, as in a container; the test talks to it on 127.0.0.1 only.
"""

from __future__ import annotations

import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mysisterdb.redis_server import RedisServer, free_port
from tests.conftest import stack_env
from tests.procs import ROOT, Proc, http_ok, mysisterdb, start, start_api, wait_for

GENERATED_DB = 5


@dataclass
class Exposed:
    url: str
    proc: Proc
    env: dict[str, str]
    data_dir: Path


@pytest.fixture(scope="module")
def exposed(redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    log_dir = tmp_path_factory.mktemp("exposed")
    port = free_port()
    env = stack_env(redis_url=f"redis://{redis_server.host}:{redis_server.port}/{GENERATED_DB}",
                    api_port=port, sim_port=free_port(), log_dir=log_dir,
                    extra={"MYSISTERDB_HOST": "0.0.0.0"})
    proc, url = start_api(env, log_dir=log_dir)
    yield Exposed(url=url, proc=proc, env=env, data_dir=log_dir / "data")
    proc.stop()


def printed_token(proc: Proc) -> str:
    found = re.search(r"Sign in: http://localhost:\d+/signin#token=([A-Za-z0-9_-]+)", proc.log())
    assert found, proc.log()[-2000:]
    return found.group(1)


def test_a_token_is_generated_printed_and_required(exposed: Exposed) -> None:
    token = printed_token(exposed.proc)
    token_file = exposed.data_dir / "api-token"
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(exposed.data_dir.stat().st_mode) == 0o700
    again = subprocess.run(mysisterdb("token"), env=exposed.env, cwd=ROOT, capture_output=True,
                           text=True, timeout=30, check=True)
    assert again.stdout.strip() == token  # `mysisterdb token` agrees with what was printed
    assert httpx.get(f"{exposed.url}/api/conversations", timeout=5).status_code == 401
    assert httpx.get(f"{exposed.url}/api/incidents", timeout=5).status_code == 401
    assert httpx.get(f"{exposed.url}/", timeout=5).status_code == 303
    wrong = {"Authorization": f"Bearer {token[:-1]}x"}
    assert httpx.get(f"{exposed.url}/api/conversations", headers=wrong, timeout=5).status_code == 401
    right = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{exposed.url}/api/conversations", headers=right, timeout=5).status_code == 200
    # The one person of this mode is also the operator.
    assert httpx.get(f"{exposed.url}/api/incidents", headers=right, timeout=5).status_code == 200
    assert httpx.get(f"{exposed.url}/api/current-time", timeout=5).status_code == 200


def test_the_token_survives_a_restart_and_is_printed_only_once(
        exposed: Exposed, tmp_path: Path) -> None:
    token = printed_token(exposed.proc)
    port = free_port()
    env = {**exposed.env, "MYSISTERDB_PORT": str(port)}
    second = start("api-again", mysisterdb("api"), env=env, log_dir=tmp_path)
    try:
        wait_for(http_ok(f"http://127.0.0.1:{port}/api/current-time"), timeout_s=20,
                 what="the second api")
        assert "uses the access token" in second.log()
        assert token not in second.log() and "Sign in:" not in second.log()
        right = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/conversations", headers=right,
                         timeout=5).status_code == 200  # the same token, kept
    finally:
        second.stop()
