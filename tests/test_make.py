"""The Makefile's install logic, run by make itself on a copy of the Makefile in a temporary
directory, with PYTHON pointing at a stub: nothing is installed, nothing reaches the index.

- A Python whose venv cannot bootstrap pip (Debian/Ubuntu without python3-venv) stops
  `make run` with one line naming the package, and leaves no half-made venv behind.
- `make run` installs the project alone, `make test`/`lint`/`bench`/`install` the dev extras.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.procs import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

# What Debian's python3.11 prints for `python3 -m venv DIR` without python3.11-venv (after
# creating DIR/bin/python, without pip), exit status 1.
DEBIAN_NO_ENSUREPIP = """\
The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

You may need to use sudo with that command.  After installing the python3-venv
package, recreate your virtual environment.

Failing command: $2/bin/python3.11
"""


def write_stub(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run([str(MAKE), "--no-print-directory", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy2(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    return tmp_path


def test_run_without_ensurepip_says_in_one_line_what_to_install(project: Path) -> None:
    stub = write_stub(project / "python3", f"""\
[ "$1" = -m ] && [ "$2" = venv ] || exit 3
mkdir -p "$3/bin" && ln -s /bin/true "$3/bin/python3.11" && ln -s python3.11 "$3/bin/python"
cat >&2 <<EOF
{DEBIAN_NO_ENSUREPIP.replace("$2", "$3")}EOF
exit 1
""")
    done = make(project, "run", f"PYTHON={stub}")
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode != 0, lines
    assert len(lines) == 1, lines
    assert "sudo apt install python3.11-venv" in lines[0], lines
    assert not (project / ".venv").exists(), "the half-made venv was left behind"


def test_run_when_venv_fails_otherwise_says_why(project: Path) -> None:
    stub = write_stub(project / "python3", 'echo "Error: [Errno 13] Permission denied: \'$3\'" >&2\n'
                                           "exit 1\n")
    done = make(project, "run", f"PYTHON={stub}")
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode != 0 and len(lines) == 1, lines
    assert "Permission denied" in lines[0] and "apt" not in lines[0], lines


@pytest.fixture
def venv_made(project: Path) -> Path:
    """A venv as `python3 -m venv` leaves it (pip there), nothing installed yet."""
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "pip"):
        write_stub(bin_dir / name, "exit 0\n")
    return project


def pip_installs(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [line.split("pip install --quiet ", 1)[1] for line in done.stdout.splitlines()
            if "pip install --quiet " in line]


def test_run_installs_only_the_project(venv_made: Path) -> None:
    assert pip_installs(make(venv_made, "-n", "run")) == ["--upgrade pip", "-e ."]


@pytest.mark.parametrize("goal", ["test", "lint", "bench", "install"])
def test_dev_goals_install_the_dev_extras(venv_made: Path, goal: str) -> None:
    assert pip_installs(make(venv_made, "-n", goal)) == ["--upgrade pip", "-e .", "-e '.[dev]'"]


def test_dev_extras_once_then_only_when_pyproject_changes(venv_made: Path) -> None:
    assert pip_installs(make(venv_made, "install")) == ["--upgrade pip", "-e .", "-e '.[dev]'"]
    assert pip_installs(make(venv_made, "-n", "test")) == []
    assert pip_installs(make(venv_made, "-n", "run")) == []
    pyproject = venv_made / "pyproject.toml"
    stamp_time = (venv_made / ".venv" / ".installed-dev").stat().st_mtime
    os.utime(pyproject, (stamp_time + 10, stamp_time + 10))
    assert pip_installs(make(venv_made, "-n", "run")) == ["--upgrade pip", "-e ."]
    assert pip_installs(make(venv_made, "-n", "lint")) == ["--upgrade pip", "-e .", "-e '.[dev]'"]
