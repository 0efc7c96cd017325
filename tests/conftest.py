"""Shared fixtures: a real redis-server (the same binary `make run` uses), and a real stack:
the Gemini simulator, a Celery worker (prefork) and the API, as subprocesses.

Limits are short so that failure paths finish in seconds:
hard 6 s, soft 4 s, Gemini request timeout 1.5 s, one retry.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mysisterdb.redis_server import RedisServer, free_port, start_redis
from tests.procs import Stack, http_ok, mysisterdb, start, start_ready, wait_for

pytest_plugins = ["tests.timing", "tests.reuse_tls"]

STACK_DB = 1  # unit tests flush db 0; the running stack lives in db 1

TEST_LIMITS = {
    "MYSISTERDB_TASK_TIME_LIMIT": "6",
    "MYSISTERDB_TASK_SOFT_TIME_LIMIT": "4",
    "MYSISTERDB_GEMINI_TIMEOUT": "1.5",
    "MYSISTERDB_GEMINI_RETRIES": "1",
    "MYSISTERDB_GEMINI_BACKOFF_S": "0.1",
    # A summary failing on a directive left in its conversation retries within seconds, not
    # minutes: tests that wait for a quiet stack do not wait on it.
    "MYSISTERDB_SUMMARY_RETRY_S": "1",
    "MYSISTERDB_WORKER_CONCURRENCY": "2",
    "MYSISTERDB_DEBUG_DIRECTIVES": "1",
    "MYSISTERDB_LOG_LEVEL": "INFO",
    # Every test stack is one person (open mode) sending far more than a person would;
    # tests/api/test_security.py checks the limit itself.
    "MYSISTERDB_RATE_LIMIT": "100000/minute",
}


# The longest modules (each lane's "longest modules" list in CI's log) are
# handed out first: under pytest-xdist (`make test`) a long module picked up last by one
# worker while the other idles is the run's tail.
SLOW_FIRST = ("tests/api/test_contract.py", "tests/test_install.py", "tests/test_up.py",
              "tests/api/test_faults.py", "tests/workers/test_restarts.py",
              "tests/workers/test_cancel.py", "tests/test_ops.py",
              "tests/api/test_redis_sentinel.py", "tests/context/test_property.py")


# Tests that leave their module's stack down: last in their module, so that no test after
# them has to bring it up again (a compose up is 15-30 s on a busy box). Two of one module run
# in the order listed here.
LAST_IN_MODULE = ("tests/compose/test_stack.py::test_down_then_up_keeps_history_and_down_v_removes_it",
                  "tests/workers/test_prefork.py::"
                  "test_a_worker_whose_pool_never_answers_ends_its_stop_within_the_bound",
                  "tests/workers/test_restarts.py::"
                  "test_sigterm_of_the_worker_lets_the_running_prompt_finish_then_exits",
                  "tests/test_up.py::test_children_do_not_outlive_a_killed_up",
                  "tests/test_up.py::test_up_serves_a_round_trip_and_on_ctrl_c_lets_a_running_"
                  "prompt_finish_then_stops_all")
# Modules that share one compose project, up from their first test to the session's end
# (tests/compose/conftest.py): together and last, so that no other compose project runs
# beside it.
SHARED_LAST = ("tests/compose/test_scaled.py", "tests/compose/test_tls.py",
               "tests/compose/test_redis_tls.py")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Outermost (tryfirst, registered after pytest-randomly): the order is set after its
    shuffle, which the other modules keep."""
    result = yield
    rank = {module: n for n, module in enumerate(SLOW_FIRST)}
    module_of = {item.nodeid: item.nodeid.split("::", 1)[0] for item in items}
    first_seen = {module: n for n, module in reversed(list(enumerate(module_of.values())))}
    last = {nodeid: n for n, nodeid in enumerate(LAST_IN_MODULE, start=1)}
    # sort is stable: modules stay together in their shuffled order, LAST_IN_MODULE at the end
    items.sort(key=lambda item: (module_of[item.nodeid] in SHARED_LAST,
                                 rank.get(module_of[item.nodeid], len(rank)),
                                 first_seen[module_of[item.nodeid]],
                                 last.get(item.nodeid, 0)))
    return result


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a flushed database 0: each test starts from empty storage."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5, decode_responses=False)
    client.flushdb()
    yield client
    client.close()


def stack_env(*, redis_url: str, api_port: int, sim_port: int, log_dir: Path,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MYSISTERDB_") and k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(TEST_LIMITS)
    env.update({
        "MYSISTERDB_REDIS_URL": redis_url,
        "MYSISTERDB_PORT": str(api_port),
        "MYSISTERDB_SIM_PORT": str(sim_port),
        "MYSISTERDB_GEMINI_ENDPOINT": f"http://127.0.0.1:{sim_port}",
        "MYSISTERDB_LOG_DIR": str(log_dir),
        "MYSISTERDB_DATA_DIR": str(log_dir / "data"),
    })
    env.update(extra or {})
    return env


def start_stack(*, redis_url: str, log_dir: Path, extra: dict[str, str] | None = None,
                worker_roles: tuple[str, ...] = ("all",)) -> Stack:
    """One worker on both queues by default; ("chat", "summary") is `mysisterdb up`'s layout."""
    api_port, sim_port = free_port(), free_port()
    env = stack_env(redis_url=redis_url, api_port=api_port, sim_port=sim_port, log_dir=log_dir,
                    extra=extra)
    stack = Stack(api_url=f"http://127.0.0.1:{api_port}", sim_url=f"http://127.0.0.1:{sim_port}",
                  redis_url=redis_url, env=env)
    try:
        stack.procs["simulator"] = start("simulator", mysisterdb("simulator"), env=env,
                                         log_dir=log_dir)
        for role in worker_roles:
            name = "summary-worker" if role == "summary" else "worker"
            stack.procs[name] = start(name, mysisterdb("worker", "--role", role), env=env,
                                      log_dir=log_dir)
        stack.procs["api"] = start("api", mysisterdb("api"), env=env, log_dir=log_dir)
        wait_for(http_ok(f"{stack.sim_url}/_sim/health"), timeout_s=20, what="simulator")
        wait_for(http_ok(f"{stack.api_url}/api/current-time"), timeout_s=20, what="api")
        wait_for(lambda: _healthy(stack), timeout_s=30, what="worker")
    except BaseException:
        for proc in stack.procs.values():
            print(f"--- {proc.name} ---\n{proc.log()[-3000:]}")
        stack.stop()
        raise
    return stack


def _healthy(stack: Stack) -> bool:
    import httpx

    return httpx.get(f"{stack.api_url}/api/health", timeout=2.0).status_code == 200


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Gemini simulator alone, as its own process, for tests of the LLM clients."""
    log_dir = tmp_path_factory.mktemp("simulator")
    port = free_port()
    env = stack_env(redis_url="redis://127.0.0.1:1/0", api_port=free_port(), sim_port=port,
                    log_dir=log_dir)
    url = f"http://127.0.0.1:{port}"
    proc = start_ready("simulator", mysisterdb("simulator"), env=env, log_dir=log_dir,
                       ready_url=f"{url}/_sim/health")
    yield url
    proc.stop()


def db_url(server: RedisServer, db: int) -> str:
    return f"redis://{server.host}:{server.port}/{db}"


def own_stack(server: RedisServer, tmp_path_factory: pytest.TempPathFactory, *, db: int,
              name: str, extra: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack of a module's own on a database of the shared redis-server, for a fixture to
    `yield from`: settings the shared stack must not have, or load nobody should wait behind."""
    running = start_stack(redis_url=db_url(server, db), log_dir=tmp_path_factory.mktemp(name),
                          extra=extra)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=STACK_DB, name="stack")


@pytest.fixture
def conversation_id() -> str:
    """A fresh conversation per test: tests share the stack, never their history."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stack_redis(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    yield client
    client.close()
