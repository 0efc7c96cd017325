"""The streamed reply's text, written to the job record coalesced.

Every write of the text is a transaction on the job record and wakes every follower of the
job, so writing each chunk made the text the biggest share of a prompt's Redis work. Here:

- the first chunk is written at once: the first words are never delayed;
- `opening=True`: a write is due before any text, carrying what the caller adds to its
  first write (the worker's generate step starting): the first chunk makes it, or the timer
  once the interval is up when no chunk came sooner, or `close()`. So the step's start costs
  no write of its own, and no round trip before the first text, when the model answers
  within the interval;
- later chunks are written at most every `interval_s`: a chunk arriving sooner waits, and a
  timer writes it when the interval is up, so text never waits on the next chunk (a stream
  that stalls for seconds still shows what it has within the interval);
- `close()` writes what is pending, so that the text a failed (incomplete) job keeps is
  whole; `stop()` writes nothing (the completed end writes the whole text itself).

Each write is the whole text so far, made one at a time under a lock and only ever longer
than the one before: a follower sees the text grow, in order, never a piece twice.

A write that waits is run by one thread per process (`later()`), not a `threading.Timer`
each: starting a thread waits until the new thread runs, and the opening's timer is armed
between the build and the request to the model, on the path to the first text.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from core.outcomes import JobGone

logger = logging.getLogger(__name__)

Write = Callable[[str], None]  # the whole text so far; raises JobGone once the job ended


class Later:
    """Runs each callable given to `call_in` once its wait is over, in order, on one thread."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._due: list[tuple[float, int]] = []  # (monotonic time, ticket), a heap
        self._pending: dict[int, Callable[[], None]] = {}  # a cancelled ticket is not here
        self._tickets = itertools.count()
        threading.Thread(target=self._run, name="stream-text-later", daemon=True).start()

    def call_in(self, wait_s: float, call: Callable[[], None]) -> Ticket:
        ticket = next(self._tickets)
        with self._ready:
            self._pending[ticket] = call
            heapq.heappush(self._due, (time.monotonic() + wait_s, ticket))
            self._ready.notify()
        return Ticket(self, ticket)

    def cancel(self, ticket: int) -> None:
        with self._ready:
            self._pending.pop(ticket, None)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._ready.wait(self._due[0][0] - time.monotonic() if self._due else None)
                call = self._pending.pop(heapq.heappop(self._due)[1], None)
            if call is not None:
                try:
                    call()
                except Exception:  # the thread serves every later write of the process
                    logger.exception("a pending write failed")


class Ticket:
    def __init__(self, later: Later, ticket: int) -> None:
        self._later, self._ticket = later, ticket

    def cancel(self) -> None:
        self._later.cancel(self._ticket)


_later: tuple[int, Later] | None = None  # (pid, its Later): a forked child starts its own
_later_lock = threading.Lock()


def later() -> Later:
    global _later
    with _later_lock:
        if _later is None or _later[0] != os.getpid():
            _later = (os.getpid(), Later())
        return _later[1]


class CoalescedText:
    def __init__(self, write: Write, *, interval_s: float, before: str = "",
                 clock: Callable[[], float] = time.monotonic, opening: bool = False) -> None:
        self._write = write
        self._interval_s = interval_s
        self._clock = clock
        self._parts: list[str] = [before]
        self._before = before
        self._written = before
        self._written_at: float | None = None  # no text yet: the first chunk goes at once
        self._opening = opening  # a write is due even without new text
        self._state = threading.Lock()  # parts, timer, opening (held briefly)
        self._writing = threading.Lock()  # one write at a time, in order
        self._timer: Ticket | None = None
        self._armed = 0  # timers armed so far: a running timer knows whether it is current
        self._gone: JobGone | None = None  # the timer's write found the job ended
        self.writes = 0
        if opening:
            if interval_s > 0:
                self._arm(interval_s)
            else:  # every write at once
                self.flush()

    @property
    def job_ended(self) -> bool:
        """A timer's write found the job over: the next chunk raises JobGone."""
        return self._gone is not None

    def __call__(self, piece: str) -> None:
        """A chunk arrived (the LLM client's on_text)."""
        if self._gone is not None:
            raise self._gone
        with self._state:
            self._parts.append(piece)
            wait = self._wait_s()
            if wait > 0:
                self._arm(wait)
                return
            # The opening's timer, if still armed, is this write's: a later chunk arms its
            # own, an interval after this one.
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()

    def _wait_s(self) -> float:
        if self._written_at is None or self._interval_s <= 0:
            return 0.0
        return self._written_at + self._interval_s - self._clock()

    def _arm(self, wait_s: float) -> None:
        if self._timer is None:  # one pending write covers every chunk until it runs
            self._armed += 1
            armed = self._armed
            self._timer = later().call_in(wait_s, lambda: self._on_timer(armed))

    def _on_timer(self, armed: int) -> None:
        with self._state:
            if armed == self._armed:  # not a cancelled one that was already running
                self._timer = None
        try:
            self.flush()
        except JobGone as gone:  # the main thread raises it with its next chunk
            self._gone = gone
        except Exception as exc:  # Redis blinked: the next chunk or close() writes it
            logger.warning("streamed text not written yet (%s)", type(exc).__name__)

    def flush(self) -> None:
        """Write the text so far, if it is more than what was written (or the opening is
        due)."""
        with self._writing:
            with self._state:
                whole = "".join(self._parts)
                opening = self._opening
            if whole == self._written and not opening:
                return
            self._write(whole)
            self.writes += 1
            with self._state:
                self._opening = False
            self._written = whole
            if whole != self._before:  # the interval runs from the first text written
                self._written_at = self._clock()

    def stop(self) -> None:
        """No write pending any more (a timer already writing finishes first); an opening
        not made yet stays due (`close()` makes it)."""
        with self._state:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        with self._writing:
            pass

    def close(self) -> None:
        """Stop, then write whatever is pending (the opening too): the stored text is whole."""
        self.stop()
        self.flush()
