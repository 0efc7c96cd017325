"""The sweep's thread: runs `Lifecycle.sweep` every few seconds in the API and in each
worker's main process (either alone is enough; both make it survive either's death)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.lifecycle import Lifecycle

logger = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, *, make_lifecycle: Callable[[], Lifecycle], interval_s: float,
                 name: str) -> None:
        self._make = make_lifecycle
        self._interval_s = interval_s
        self._name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name=self._name)
        self._thread.start()

    def wake(self) -> None:
        """Sweep now, publishing the whole outbox: a hand-over was just written by a
        process that must not publish itself (the worker's parent)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        lifecycle = self._make()
        while not self._stop.is_set():
            woken = self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                report = lifecycle.sweep(outbox_grace_s=0.0 if woken else None)
            except Exception as exc:  # Redis away: the next round tries again
                logger.warning("%s: sweep failed: %s", self._name, exc)
                continue
            if report.published or report.ended:
                logger.info("%s: published %d, ended %d", self._name, len(report.published),
                            len(report.ended))
