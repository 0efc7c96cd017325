"""The worker's Celery app, built from the settings the first time it is asked for.

Importing this module builds nothing and reads no settings (PEP 562 `__getattr__`), so a
test or a tool can import the workers package freely; `celery -A workers.celery_app ...`
(the compose healthcheck) and the worker's entry point (`python -m workers`) get the app.
The tasks are `shared_task`s: they join whichever app the process runs.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from core.settings import get_settings
from taskqueue.app import create_celery
from workers import alive, bounded_stop

WORKER_MODULES = ("workers.tasks", "workers.signals")


@lru_cache(maxsize=1)
def worker_app() -> Celery:
    settings = get_settings()
    app = create_celery(settings, include=WORKER_MODULES)
    bounded_stop.install(app, settings)  # a stopping worker always ends
    alive.install(app, settings)  # the healthcheck's file, when one is set
    return app


def __getattr__(name: str) -> Celery:
    if name in ("app", "celery_app"):
        return worker_app()
    raise AttributeError(name)
