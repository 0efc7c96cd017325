"""`mysisterdb check` as a whole: a clean store exits 0; the real command reports and repairs."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from core import keys
from core.models import JobStatus, utcnow
from mysisterdb.redis_server import RedisServer
from tests.mysisterdb.check.plant import (
    check,
    conversation,
    problems,
    store_turn,
)


def test_clean_data_has_no_findings_and_exits_0(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 3)
    store_turn(redis_client, "a", 4, reply=False, status=JobStatus.FAILED)  # no reply: no gap
    # After a reset the turn counter keeps going: turns 7-8 alone are fine, counter ahead too.
    store_turn(redis_client, "b", 7)
    store_turn(redis_client, "b", 8)
    redis_client.set(keys.conv_turn("b"), 9)
    store_turn(redis_client, "c", 1, reply=False, status=JobStatus.IN_PROGRESS, at=utcnow())
    assert problems(redis_client) == []
    code, out = check(redis_client)
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("check: 0 problems, 0 repaired")


def test_cli_exits_1_on_a_problem_and_0_after_repair(
    redis_client: redis.Redis, redis_server: RedisServer,
) -> None:
    conversation(redis_client, "a", 2)
    store_turn(redis_client, "a", 3, reply=False, status=JobStatus.IN_PROGRESS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSISTERDB_")}
    env["MYSISTERDB_REDIS_URL"] = redis_server.url

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mysisterdb", "check", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    found = cli()
    assert found.returncode == 1, found.stderr
    assert "stale_job" in found.stdout and "check: 1 problems, 0 repaired" in found.stdout
    repaired = cli("--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "check: 1 problems, 1 repaired" in repaired.stdout
    clean = cli()
    assert clean.returncode == 0 and "check: 0 problems" in clean.stdout
