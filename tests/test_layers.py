"""The drawing in docs/architecture.md, checked against the imports: each room imports only
what the drawing lets it (every import statement, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.procs import ROOT

FORBIDDEN = {
    "core": {"fastapi", "starlette", "uvicorn", "celery", "kombu", "api", "workers", "taskqueue",
             "mysisterdb"},
    "context": {"api", "workers", "taskqueue", "mysisterdb", "core"},
    "api": {"workers", "mysisterdb"},
    "workers": {"api", "mysisterdb"},
    "taskqueue": {"api", "workers", "mysisterdb", "fastapi"},
}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_each_room_imports_only_what_the_drawing_allows(room: str) -> None:
    wrong = {str(path.relative_to(ROOT)): sorted(imported(path) & FORBIDDEN[room])
             for path in sorted((ROOT / room).rglob("*.py"))}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_no_module_is_over_450_lines() -> None:
    rooms = ("api", "workers", "context", "core", "taskqueue", "mysisterdb", "tests", "bench")
    long = {str(p.relative_to(ROOT)): n for room in rooms for p in (ROOT / room).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert long == {}
