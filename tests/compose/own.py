"""A compose stack of a test module's own: docker-compose.yml plus override files, its own
project name and image tag (built from the shared cache), an empty env file, free host ports;
down before (what an interrupted run left) and after, volumes included."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mysisterdb.redis_server import free_port
from tests.compose.test_stack import (
    CHECKOUT_ID,
    COMPOSE_FILE,
    UP_TIMEOUT_S,
    Compose,
    compose_env,
    need_docker,
)


@contextmanager
def own_compose(tmp_path_factory: pytest.TempPathFactory, *, name: str,
                overrides: tuple[Path, ...], env: dict[str, str] | None = None,
                profiles: tuple[str, ...] = (), flower_port: int | None = None,
                ) -> Iterator[Compose]:
    """Up (the README's command with the overrides), the generated token read, yielded."""
    need_docker()
    folder = tmp_path_factory.mktemp(name)
    env_file = folder / "empty.env"
    env_file.write_text("")
    api_port = free_port()
    stack = Compose(project=f"mysisterdb-{name}-test-{CHECKOUT_ID}",
                    env={**compose_env(api_port, flower_port or free_port()),
                         "MYSISTERDB_IMAGE_TAG": f"test-{CHECKOUT_ID}-{name}", **(env or {})},
                    env_file=env_file, api_url=f"http://127.0.0.1:{api_port}",
                    files=(COMPOSE_FILE, *overrides))
    profile = [a for p in profiles for a in ("--profile", p)]
    try:
        stack.run(*profile, "down", "-v", "--remove-orphans")
        stack.run(*profile, "up", "-d", "--build", "--wait", timeout_s=UP_TIMEOUT_S)
        stack.token = stack.run("exec", "-T", "api", "mysisterdb", "token").stdout.strip()
        yield stack
    finally:
        stack.run(*profile, "down", "-v", "--remove-orphans", check=False)
