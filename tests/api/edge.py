"""Helpers of the exposure tests (test_exposure_*): a bare API process (no worker, no
simulator: these tests never need a reply) on a database of the session's redis-server."""

from __future__ import annotations

from pathlib import Path

from mysisterdb.redis_server import RedisServer, free_port
from tests.conftest import stack_env
from tests.procs import Proc, start_api

EDGE_DB = 10
ALICE = "alice-token-" + "a" * 24
BOB = "bob-token-" + "b" * 24
OPERATOR = "operator-token-" + "o" * 24
TOKENS = {"MYSISTERDB_API_TOKENS": f"alice:{ALICE},bob:{BOB}",
          "MYSISTERDB_OPERATOR_TOKEN": OPERATOR}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bare_api(server: RedisServer, log_dir: Path, *, name: str,
             extra: dict[str, str] | None = None) -> tuple[Proc, str]:
    env = stack_env(redis_url=f"redis://{server.host}:{server.port}/{EDGE_DB}",
                    api_port=free_port(), sim_port=free_port(), log_dir=log_dir, extra=extra)
    return start_api(env, log_dir=log_dir, name=name)
