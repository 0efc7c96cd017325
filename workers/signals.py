"""Worker main-process hooks: heartbeat (for health and queue views), resource logs,
the tokenizer warmed in each pool process before its first prompt."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import psutil
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from mysisterdb import keys
from mysisterdb.monitoring import WorkerBeat, write_heartbeat
from mysisterdb.redis_client import connect
from mysisterdb.resources import ResourceMonitor, sample
from mysisterdb.settings import get_settings

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
_stop = threading.Event()
_hostname: list[str] = []


def beat_once(client: Any, hostname: str, concurrency: int) -> None:
    usage = sample(psutil.Process())
    write_heartbeat(client, WorkerBeat(hostname=hostname, pid=os.getpid(),
                                       concurrency=concurrency, at=time.time(),
                                       rss_mb=round(usage.rss_mb + usage.children_rss_mb, 1),
                                       children=usage.children))


def heartbeat_loop(hostname: str, concurrency: int) -> None:
    client = connect(get_settings().redis_url, timeout_s=2.0)
    while not _stop.is_set():
        try:
            beat_once(client, hostname, concurrency)
        except Exception as exc:  # Redis away: keep trying, health shows the worker missing
            logger.warning("heartbeat failed: %s", exc)
        _stop.wait(HEARTBEAT_INTERVAL_S)


@worker_ready.connect
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    hostname = getattr(sender, "hostname", None) or f"worker@{os.getpid()}"
    concurrency = int(getattr(getattr(sender, "controller", None), "concurrency", 0)
                      or settings.worker_concurrency)
    _hostname.append(hostname)
    threading.Thread(target=heartbeat_loop, args=(hostname, concurrency), daemon=True,
                     name="heartbeat").start()
    ResourceMonitor(label=f"worker {hostname}", interval_s=settings.resource_log_interval,
                    warn_mb=settings.memory_warn_mb).start()


@worker_shutdown.connect
def on_worker_shutdown(**_: Any) -> None:
    """Leave at once: health must not count a worker that is going away."""
    _stop.set()
    for hostname in _hostname:
        with contextlib.suppress(Exception):
            connect(get_settings().redis_url, timeout_s=1.0).delete(keys.worker_heartbeat(hostname))


@worker_process_init.connect
def on_process_init(**_: Any) -> None:
    from context.tokens import count_tokens

    count_tokens("warm up")  # load the encoder now, not inside a prompt's time limit
