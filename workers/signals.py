"""Worker main-process hooks: what children share preloaded before the pool forks
(`workers/preload.py`), heartbeat (for health, the queue view and admission), the lifecycle's
sweep, resource logs."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from celery.worker import state as worker_state

from core.history import history_store
from core.lifecycle import Lifecycle, Limits
from core.monitoring import WorkerBeat, remove_heartbeat, write_heartbeat
from core.orphan import exit_with_parent
from core.redis_client import connect
from core.redis_tls import check_at_start
from core.resources import ResourceMonitor, sample
from core.settings import get_settings
from core.sweeper import Sweeper
from taskqueue.port import CeleryBroker
from workers.preload import preload
from workers.runtime import get_runtime

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
BEAT_JOIN_S = 5.0  # a beat: a psutil sample and one Redis write (2 s timeout)
REMOVE_TIMEOUT_S = 3.0  # the shutdown's removal of the heartbeat (was 1 s, failing silently)
SWEEP_REDIS_TIMEOUT_S = 2.0


@dataclass
class MainProcess:
    """What the worker's main process runs beside the pool."""

    stop: threading.Event = field(default_factory=threading.Event)
    hostnames: list[str] = field(default_factory=list)
    beats: list[threading.Thread] = field(default_factory=list)
    sweeper: Sweeper | None = None


_main = MainProcess()


def wake_sweeper() -> None:
    """A hand-over was written by the parent: publish it now (no-op in a pool child)."""
    if _main.sweeper is not None:
        _main.sweeper.wake()


def sweeper_for(app: Celery) -> Sweeper:
    settings = get_settings()

    def make() -> Lifecycle:
        client = connect(settings.redis_url, timeout_s=SWEEP_REDIS_TIMEOUT_S)
        return Lifecycle(client=client, history=history_store(client),
                         limits=Limits.from_settings(settings), broker=CeleryBroker(app))

    return Sweeper(make_lifecycle=make, interval_s=settings.sweep_interval_s,
                   name="worker-sweep")


@dataclass(frozen=True)
class PoolView:
    """What the heartbeat reports of this worker's pool, read from the main process."""

    controller: Any  # celery's WorkController (None if the signal came without one)
    queues: list[str]

    @property
    def concurrency(self) -> int:
        """The most processes the pool may have: the autoscale maximum, or its fixed size."""
        return int(getattr(self.controller, "max_concurrency", None)
                   or getattr(self.controller, "concurrency", None)
                   or get_settings().worker_concurrency)

    @property
    def min_concurrency(self) -> int:
        return int(getattr(self.controller, "min_concurrency", None) or self.concurrency)

    @property
    def processes(self) -> int:
        pool = getattr(self.controller, "pool", None)
        return int(getattr(pool, "num_processes", 0) or 0)


def beat_once(client: Any, hostname: str, view: PoolView) -> None:
    usage = sample(psutil.Process())
    write_heartbeat(client, WorkerBeat(
        hostname=hostname, pid=os.getpid(), concurrency=view.concurrency, at=time.time(),
        rss_mb=round(usage.rss_mb + usage.children_rss_mb, 1), children=usage.children,
        queues=view.queues, min_concurrency=view.min_concurrency, processes=view.processes,
        busy=len(worker_state.active_requests)))


def heartbeat_loop(hostname: str, view: PoolView) -> None:
    client = connect(get_settings().redis_url, timeout_s=2.0)
    while not _main.stop.is_set():
        try:
            beat_once(client, hostname, view)
        except Exception as exc:  # Redis away: keep trying, health shows the worker missing
            logger.warning("heartbeat failed: %s", exc)
        _main.stop.wait(HEARTBEAT_INTERVAL_S)


def consumed_queues(consumer: Any) -> list[str]:
    task_consumer = getattr(consumer, "task_consumer", None)
    return sorted(q.name for q in getattr(task_consumer, "queues", None) or [])


@worker_init.connect
def on_worker_init(**_: Any) -> None:
    """Before the pool forks its first child."""
    settings = get_settings()
    # Before the broker connects: a plaintext Redis off this host, or a TLS one whose
    # certificate fails, is said in one line rather than as endless reconnects.
    check_at_start(settings.redis_url, plaintext_ok=settings.redis_plaintext_ok)
    preload(settings)


@worker_ready.connect
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    hostname = getattr(sender, "hostname", None) or f"worker@{os.getpid()}"
    view = PoolView(controller=getattr(sender, "controller", None),
                    queues=consumed_queues(sender))
    _main.hostnames.append(hostname)
    beat = threading.Thread(target=heartbeat_loop, args=(hostname, view), daemon=True,
                            name="heartbeat")
    _main.beats.append(beat)
    beat.start()
    if sender is not None:
        _main.sweeper = sweeper_for(sender.app)
        _main.sweeper.start()
    ResourceMonitor(label=f"worker {hostname}", interval_s=settings.resource_log_interval,
                    warn_mb=settings.memory_warn_mb).start()


@worker_shutdown.connect
def on_worker_shutdown(**_: Any) -> None:
    """Leave at once: health must not count a worker that is going away."""
    _main.stop.set()
    if _main.sweeper is not None:
        _main.sweeper.stop()
    # A beat being written now would put the heartbeat back after its removal, and health
    # would count this worker online until it expired (seen in tests/test_ops.py): the
    # removal waits for the loop's last beat (its Redis timeout is 2 s).
    for beat in _main.beats:
        beat.join(timeout=BEAT_JOIN_S)
    for hostname in _main.hostnames:
        try:  # a busy machine's Redis may take more than a second: said, not swallowed
            remove_heartbeat(connect(get_settings().redis_url, timeout_s=REMOVE_TIMEOUT_S),
                             hostname)
        except Exception as exc:  # noqa: BLE001 - health counts it until the heartbeat expires
            logger.warning("heartbeat of %s not removed at shutdown: %s", hostname, exc)


@worker_process_init.connect
def on_process_init(**_: Any) -> None:
    _main.sweeper = None  # the parent's thread does not exist in a forked child
    exit_with_parent()  # never outlive the main process (core/orphan.py)
    warm_child()


def warm_child() -> None:
    """Build this child's runtime now, not inside its first prompt: ~20 ms of CPU per child
    (lazy imports, the SDK client) that a burst would otherwise pay 32 times at once. Opens
    no connection (redis-py and both SDKs connect on first use), so it stays far inside
    billiard's 4 s for a child to come up; on any error the first task builds it instead."""
    started = time.monotonic()
    try:
        get_runtime()
    except Exception as exc:
        logger.warning("pool child %d not warmed (%s): its first task builds its runtime",
                       os.getpid(), exc)
        return
    logger.info("pool child %d warm in %.0f ms", os.getpid(),
                (time.monotonic() - started) * 1000)
