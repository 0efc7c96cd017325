"""A worker's stop has a bound, so that a stopping worker always ends and is replaced.

Celery's warm shutdown (SIGTERM, or its own "Unrecoverable error") waits for the pool to
finish its tasks, and the hard time limit is enforced by the event loop that has just
stopped: a pool child that never answers (stuck, or whose result was lost on the way) keeps
the worker stopping forever. Seen under load with Sentinel: a broker reconnect blocked the
loop for 4 s, the parent then read a garbled result from a child killed by the hard limit
("Unrecoverable error: UnicodeDecodeError"), and the worker sat in its warm shutdown for
minutes, alive, consuming nothing, never restarted by `mysisterdb up` or compose.

Every stop now arms a timer: still here `worker_stop_grace_s` after the longest hard limit,
the worker logs why, kills its pool children and exits with status 1. A stop that drains in
time is untouched (running prompts still finish on SIGTERM)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import psutil
from celery import Celery
from celery.apps.worker import Worker

from core.settings import Settings

logger = logging.getLogger(__name__)

_armed = threading.Lock()


def stop_bound_s(settings: Settings) -> float:
    return max(settings.task_time_limit, settings.summary_time_limit) + \
        settings.worker_stop_grace_s


def _end_now(bound_s: float) -> None:
    children = psutil.Process().children(recursive=True)
    logger.critical("worker still stopping %.0f s after its stop began: %d pool processes "
                    "killed, exiting with status 1 for its supervisor to start a fresh one",
                    bound_s, len(children))
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    logging.shutdown()
    os._exit(1)


def arm(*, bound_s: float) -> None:
    """Once per process: end it if it is still here after `bound_s`."""
    if not _armed.acquire(blocking=False):
        return
    timer = threading.Timer(bound_s, _end_now, args=(bound_s,))
    timer.daemon = True
    timer.name = "bounded-stop"
    timer.start()


def install(app: Celery, settings: Settings) -> None:
    """Make `app`'s worker (what `celery worker` runs) arm the bound whenever it stops."""
    bound_s = stop_bound_s(settings)

    class BoundedStopWorker(Worker):  # type: ignore[misc]
        def stop(self, *args: Any, **kwargs: Any) -> None:
            arm(bound_s=bound_s)
            super().stop(*args, **kwargs)

    app.Worker = app.subclass_with_self(BoundedStopWorker)
