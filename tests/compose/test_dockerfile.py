"""Static checks of the Dockerfile and .dockerignore: the base, the user, the command, no
secret baked in or sent to the build."""

from __future__ import annotations

import json

from tests.compose.test_compose_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    GOOGLE_KEY_RE,
    SECRET_VARS,
    assert_parses,
    dockerfile_instructions,
)


def test_dockerfile_base_user_and_cmd() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms and froms[-1].split()[0] == "python:3.11-slim"
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as non-root"
    assert any(word == "RUN" and "pip install" in args and " ." in args
               for word, args in instructions), "installs the project from pyproject.toml"
    cmds = [args for word, args in instructions if word == "CMD"]
    assert cmds, "no CMD"
    cmd = json.loads(cmds[-1])  # exec form: signals reach the process directly
    assert cmd[0] == "mysisterdb"
    assert_parses(cmd[1:], "Dockerfile CMD")
    env_text = " ".join(args for word, args in instructions if word == "ENV")
    assert "MYSISTERDB_HOST=0.0.0.0" in env_text


def test_dockerfile_bakes_no_secret() -> None:
    for word, args in dockerfile_instructions():
        if word in ("ENV", "ARG", "LABEL"):
            for var in SECRET_VARS:
                assert var not in args, f"{word} {args}: secrets come from the environment"
        if word in ("COPY", "ADD"):
            assert ".env" not in args.split(), args
    assert not GOOGLE_KEY_RE.search(DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    for pattern in (".env", ".venv", ".git", "data", "logs"):
        assert pattern in patterns, f".dockerignore lacks {pattern}"
    assert "README.md" not in patterns, "pyproject.toml's readme is needed by `pip install .`"


