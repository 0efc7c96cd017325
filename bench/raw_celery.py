"""A bare Celery round trip on the same Redis, for the capacity benchmark's "queue's own cost":
one no-op task, its result through Redis, nothing of MySisterDB's lifecycle.

    celery -A bench.raw_celery worker --pool=prefork --concurrency=1 --queues=raw
    (with RAW_CELERY_BROKER=redis://...)
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("raw", broker=os.environ.get("RAW_CELERY_BROKER", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("RAW_CELERY_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue="raw", worker_prefetch_multiplier=1, task_acks_late=True,
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                result_expires=600)


@app.task(name="raw.noop")
def noop(x: int) -> int:
    return x
