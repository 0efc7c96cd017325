"""Waiting for a job to change without holding a thread or a worker.

Every job write publishes "job_id sequence record" on one pub/sub channel in its own
transaction (`JobStore.write`). Each API process keeps one subscription (one Redis
connection) and wakes the waiters of that job: a long-poll or an SSE stream is an asyncio
Event, not a thread. The record in the announcement is kept for the job's waiters, so a woken
stream sends it without reading it back: one round trip less per change, on the path of
every streamed text.

A notification can be lost (the subscription reconnecting, Redis restarted): waiters also
read the job again every RECHECK_S, and every RECHECK_DOWN_S while the subscription is
down, and all of them read again when it comes back. So a lost notification delays an
answer by at most a recheck; it never loses a change, because the job record is the truth
and each read compares its sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterator

import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from api.background import RedisLoop
from core import keys, redis_sentinel
from core.models import Job
from core.redis_client import DEFAULT_URL

logger = logging.getLogger(__name__)

RECHECK_S = 5.0
RECHECK_DOWN_S = 0.5
LISTEN_POLL_S = 1.0  # how long one read of the subscription blocks
HEALTH_CHECK_S = 5  # PING on the subscription: a silently dead connection is noticed
RECONNECT_MAX_S = 2.0
POOL_SIZE = 32  # connections for reads, plus the subscription's own


class JobWatcher(RedisLoop):
    name = "job-watcher"

    def __init__(self, *, url: str | None, timeout_s: float) -> None:
        # A bounded pool: many waiters share a few connections (each read is short) and
        # queue for one at most timeout_s, instead of opening a connection each.
        # As the sync clients (core.redis_client.connect): a connection that broke
        # while idle (Redis restarted) is replaced once; a timeout is never repeated.
        retry = AsyncRetry(NoBackoff(), 1, supported_errors=(aredis.ConnectionError,))
        if redis_sentinel.is_sentinel(url):  # the primary of the moment (unbounded pool)
            super().__init__(redis_sentinel.async_client(
                url or "", timeout_s=timeout_s, retry=retry, health_check_interval=HEALTH_CHECK_S))
        else:
            pool = aredis.BlockingConnectionPool.from_url(
                url or DEFAULT_URL, max_connections=POOL_SIZE, timeout=timeout_s,
                socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                health_check_interval=HEALTH_CHECK_S, retry=retry)
            super().__init__(aredis.Redis(connection_pool=pool))
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._announced: dict[str, bytes] = {}  # job id -> its last announced record
        self.listening = False

    # -- the subscription ---------------------------------------------------------------

    async def run(self) -> None:
        """Listen for ever; a broken subscription is opened again with backoff."""
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: waiters recheck until we are back
                logger.warning("job change subscription lost (%s); retrying in %.1f s",
                               exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
            else:
                backoff = 0.1

    async def _listen(self) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(keys.job_changes_channel())
            while True:
                message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self.listening = True
                    self._wake_all()  # changes while we were away were not announced
                elif message["type"] == "message":
                    self._wake(message["data"])
        finally:
            self.listening = False
            self._wake_all()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _wake(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        job_id, _, rest = raw.partition(b" ")
        events = self._waiters.get(job_id.decode())
        if not events:  # another job, or another API process's follower
            return
        _sequence, _, record = rest.partition(b" ")
        if record:  # in announcement order: the newest announced record of the job
            self._announced[job_id.decode()] = record
        for event in events:
            event.set()

    def announced(self, job_id: str) -> bytes | None:
        """The record the job's last announcement carried (None after a reconnect: changes
        may have gone unannounced, so a waiter reads)."""
        return self._announced.get(job_id)

    def _wake_all(self) -> None:
        self._announced.clear()
        for events in self._waiters.values():
            for event in events:
                event.set()

    # -- waiting ------------------------------------------------------------------------

    async def read(self, job_id: str) -> Job | None:
        raw = await self.client.get(keys.job(job_id))
        return Job.model_validate_json(raw) if raw else None

    async def wait_past(self, job_id: str, *, after: int, timeout_s: float) -> Job | None:
        """The job as soon as its sequence is past `after`, it is final, or it is gone
        (None); else as it is when `timeout_s` has passed."""
        with self.following(job_id) as follow:
            return await follow.past(after, timeout_s=timeout_s)

    @contextlib.contextmanager
    def following(self, job_id: str) -> Iterator[Following]:
        """A subscription to one job for as long as the block runs (an SSE stream's whole
        life): it reads the job only when a change was announced or a recheck is due."""
        follow = Following(self, job_id)
        self._waiters[job_id].add(follow.event)  # before any read: no change slips in between
        try:
            yield follow
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(follow.event)
                if not waiting:
                    del self._waiters[job_id]
                    self._announced.pop(job_id, None)

    @property
    def waiting(self) -> int:
        # Read by /metrics from a worker thread: copy the values before iterating them.
        return sum(len(events) for events in list(self._waiters.values()))


class Following:
    """One follower of one job: its wake-up event (registered by `JobWatcher.following`) and
    the job as last read, which stays current until the event fires or a recheck is due. A
    stream that has sent sequence N waits for the next announcement without reading the job
    again: one read per change, not two."""

    def __init__(self, watcher: JobWatcher, job_id: str) -> None:
        self.watcher, self.job_id = watcher, job_id
        self.event = asyncio.Event()
        self._last: Job | None = None
        self._stale = True  # nothing read yet, or a recheck is due

    async def first(self) -> Job | None:
        """The job as it is now, read once the follower is registered (no change slips in
        between); it stands as the last read until a change is announced: a stream that
        checks the job before it starts (404, 204) starts from that read."""
        self.event.clear()
        self._last, self._stale = await self._fresh(), False
        return self._last

    def saw(self, job: Job) -> None:
        """The job as the caller has it now (e.g. ended by the caller after `first`)."""
        self._last = job

    async def past(self, after: int, *, timeout_s: float) -> Job | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._stale or self.event.is_set():
                self.event.clear()  # before the read: a change after it sets it again
                self._last, self._stale = await self._fresh(), False
            job, left = self._last, deadline - loop.time()
            if job is None or job.sequence > after or job.status.is_final or left <= 0:
                return job
            # Jittered: waiters that arrived together must not all read at once.
            recheck = (RECHECK_S if self.watcher.listening else RECHECK_DOWN_S) * random.uniform(
                0.75, 1.25)
            try:
                await asyncio.wait_for(self.event.wait(), min(left, recheck))
            except TimeoutError:
                self._stale = True  # a lost announcement costs at most a recheck

    async def _fresh(self) -> Job | None:
        """The announced record when it is newer than the last one seen; else a read (the
        first time, on a recheck, after a reconnect, for a deleted job)."""
        if not self._stale and (raw := self.watcher.announced(self.job_id)) is not None:
            job = Job.model_validate_json(raw)
            if self._last is None or job.sequence > self._last.sequence:
                return job
        return await self.watcher.read(self.job_id)
