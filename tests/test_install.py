"""A production install: the project alone, without the dev extras, into a fresh virtualenv,
then its worker started against a real redis-server until it beats.

`make test` runs in a venv holding the dev extras, which pull in packages the code may use
without declaring them (kombu's redis transport needs `packaging`, which only kombu's
`redis` extra declares). This test is the one place that sees the dependencies exactly as
`pip install .` (and the Dockerfile) resolve them. It installs with `--no-index` from the
wheelhouse `make install` downloads (`.venv/wheelhouse`): tests reach no network, and pip has
nothing to fetch (its install ~9 s here on a quiet box, against 28 s from the index and 70-100 s
under the suite's load).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import redis

from core.monitoring import read_heartbeats
from mysisterdb.redis_server import RedisServer, start_redis
from tests.procs import ROOT, start, wait_for


def dockerfile_copies() -> tuple[str, ...]:
    """What the Dockerfile copies (`COPY name ./name`): the project as `pip install .` sees it.
    Read from there, so a new package cannot be forgotten in one place only."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    return tuple(words[1] for line in lines if (words := line.split())[:1] == ["COPY"]
                 and len(words) == 3 and words[2] in (f"./{words[1]}", "./"))


PROJECT_FILES = dockerfile_copies()
INSTALL_TIMEOUT_S = 600
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"


@pytest.fixture(scope="module")
def production_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert WHEELHOUSE.is_dir(), f"{WHEELHOUSE} is missing: `make install` downloads it"
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in PROJECT_FILES:  # a copy: pip must not write build/ into the checkout
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name)
    env_dir = base / "venv"
    # No pip in it (ensurepip costs seconds): the test run's pip installs into it.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"),
         "install", "--quiet", "--no-compile",
         "--disable-pip-version-check", "--no-index", "--find-links", str(WHEELHOUSE),
         str(src)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"pip install . failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return env_dir


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MYSISTERDB_", "PYTHON", "VIRTUAL_ENV"))
           and k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(extra)
    return env


def test_production_install_has_no_dev_packages(production_venv: Path) -> None:
    # Guards the test itself: were pytest there, a dev-only dependency could hide again.
    python = str(production_venv / "bin" / "python")
    probe = "import importlib.util as u; print(u.find_spec('pytest') is None, u.find_spec('mypy') is None)"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                         timeout=60, env=clean_env(), cwd=production_venv)
    assert out.stdout.split() == ["True", "True"], out.stdout


def test_production_install_worker_starts_and_beats(production_venv: Path,
                                                    tmp_path: Path) -> None:
    server: RedisServer = start_redis()
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    env = clean_env(MYSISTERDB_REDIS_URL=server.url, MYSISTERDB_LOG_DIR=str(tmp_path),
                    MYSISTERDB_DATA_DIR=str(tmp_path / "data"), MYSISTERDB_WORKER_CONCURRENCY="1")
    argv = [str(production_venv / "bin" / "mysisterdb"), "worker"]
    # cwd: not the checkout, so nothing can be imported from it
    worker = start("installed-worker", argv, env=env, log_dir=tmp_path, cwd=tmp_path)
    try:
        wait_for(lambda: bool(read_heartbeats(client)) or worker.process.poll() is not None,
                 timeout_s=60, what="the installed worker's heartbeat")
        assert worker.process.poll() is None, f"the worker exited:\n{worker.log()[-3000:]}"
        assert read_heartbeats(client)[0].concurrency == 1
    finally:
        worker.stop()
        client.close()
        server.stop()


def test_production_install_imports_from_site_packages(production_venv: Path) -> None:
    python = str(production_venv / "bin" / "python")
    probe = "import workers.celery_app, api.main, mysisterdb.cli as c; print(c.__file__)"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120,
                         env=clean_env(), cwd=production_venv, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert Path(out.stdout.strip()).is_relative_to(production_venv), out.stdout
