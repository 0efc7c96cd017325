"""Private files: data/ and logs/ are 0700, what MySisterDB writes in them 0600.

Conversations, incidents, logs, the Redis password and the generated API token are nobody
else's business on a shared machine. Every `mysisterdb` process sets the umask 077 at start
(`private_umask`), so files it and its children (redis-server's AOF and RDB) create are
0600; directories made before this version are tightened when a process starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_umask() -> None:
    os.umask(0o077)


def private_dir(path: Path) -> Path:
    """Create the directory 0700, or tighten an existing one (and the files directly in it)
    that we own."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # not ours (a mounted volume): leave it
        path.chmod(PRIVATE_DIR_MODE)
        for child in path.iterdir():
            if child.is_file() and not child.is_symlink():
                child.chmod(PRIVATE_FILE_MODE)
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file that is 0600 from its first byte (never readable by others, even briefly)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(PRIVATE_FILE_MODE)  # an existing file keeps its mode through O_TRUNC


def create_private(path: Path, text: str) -> bool:
    """Create the file 0600 with `text` unless it exists; False if another process (or an
    earlier start) made it first. Its content is then the one to use."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return True


def secret_in_file(path: Path, *, nbytes: int = 32) -> str:
    """The secret kept in `path`, generated (URL-safe, `nbytes` random bytes) the first time."""
    if not path.exists():
        create_private(path, secrets.token_urlsafe(nbytes) + "\n")
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise RuntimeError(f"{path} is empty: delete it to have a new secret generated")
    return value
