"""A worker's liveness as a file, for a container healthcheck that costs nothing to run.

The compose healthcheck used to be `celery inspect ping`: a Python process that imports
Celery and the app and asks the worker over the broker, ~0.5 s of CPU each time (measured:
an idle compose stack spent 5.4 s of CPU a minute on each worker's pings, every 5 s, more
than the workers themselves; Celery's issue 4079 reports the same). Instead a step of the
worker's consumer touches a file every `worker_alive_interval_s` from the worker's own
event loop, the loop that takes prompts from the broker: the file stays fresh only while
that loop turns and the consumer holds its broker connection (Celery stops the consumer's
steps when the connection is lost, which removes the file, and starts them again once it is
back; where the loss blocks the loop in a reconnect first, seen under load, the file ages). The healthcheck
is then a shell comparing the file's age with a bound (docker-compose.yml), no Python.

What the file does not prove, the tests do: remote control (cancel's revoke) rides the same
connection, through the consumer's own pidbox step.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.worker.consumer.connection import Connection

from core.settings import Settings

logger = logging.getLogger(__name__)


def touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as exc:  # a full or read-only disk: the healthcheck then says so
        logger.warning("cannot touch the liveness file %s: %s", path, exc)


def install(app: Celery, settings: Settings) -> None:
    """Add the step to `app`'s consumer when `worker_alive_file` is set."""
    if not settings.worker_alive_file:
        return
    path, interval_s = Path(settings.worker_alive_file), settings.worker_alive_interval_s

    class AliveFile(bootsteps.StartStopStep):  # type: ignore[misc]
        """Touches `path` while the consumer runs; removed when it stops."""

        requires = (Connection,)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.tref: Any = None

        def start(self, c: Any) -> None:
            touch(path)
            self.tref = c.timer.call_repeatedly(interval_s, touch, (path,), priority=10)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        shutdown = stop

    app.steps["consumer"].add(AliveFile)
