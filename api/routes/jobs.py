"""Follow a job: read it, long-poll it (?wait=&after=), stream it (SSE), cancel or retry it.

Long-polls and streams are async and wait on `api.watch.JobWatcher` (pub/sub): a waiting
client holds neither a thread nor a worker. Each holds one of its person's follower slots
(MYSISTERDB_MAX_FOLLOWERS_PER_PERSON across API processes, core/followers.py): beyond them
429 too_many_streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, cast

import anyio
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CallerDep,
    ChatServiceDep,
    LifecycleDep,
    WatcherDep,
    lifecycle_of,
)
from api.errors import NoContent
from api.schemas import ACCEPTED, JOB_ID_PATTERN, MAX_WAIT_S, JobOut, errors, stream_errors
from api.watch import Following
from core.access import Caller
from core.errors import JOB_NOT_FOUND, NotFound, TooManyStreams
from core.followers import FollowerSlots
from core.lifecycle import owned_by
from core.models import Job

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (32 hex digits)")]
SSE_RETRY_MS = 1000  # how soon EventSource reconnects after a dropped stream
SSE_WAIT_S = 15.0  # one wait inside a stream (the keep-alive comes from FastAPI)


async def current(request: Request, job: Job | None, caller: Caller) -> Job:
    """The job, 404 if gone or another person's; a job whose worker died with it is ended
    first."""
    if job is None or not owned_by(job, caller.person or ""):
        raise NotFound(JOB_NOT_FOUND)
    lifecycle = lifecycle_of(request)
    if not job.status.is_final and lifecycle.death(job) is not None:
        return await run_in_threadpool(lifecycle.reap, job, by="ジョブの読み出し")
    return job


NO_SLOT = ""  # open mode counts nothing (app.state.followers is None)


async def take_slot(request: Request, caller: Caller) -> str:
    slots: FollowerSlots | None = request.app.state.followers
    if slots is None:
        return NO_SLOT
    slot = await run_in_threadpool(slots.take, caller.person or "")
    if slot is None:
        logger.warning("%s holds %d event streams and long-polls: refused one more",
                       caller.person, slots.cap)
        raise TooManyStreams()
    return slot


async def give_back(request: Request, caller: Caller, slot: str) -> None:
    slots: FollowerSlots | None = request.app.state.followers
    if slots is None:
        return
    # Shielded: a stream ends by cancellation when its client goes, and the slot must still
    # be given back (if Redis does not answer, the lease lapses by itself).
    with anyio.CancelScope(shield=True):
        try:
            await run_in_threadpool(slots.give_back, caller.person or "", slot)
        except Exception as exc:  # any Redis failure: the lease ends it
            logger.warning("follower slot not given back (%s): it lapses with its lease",
                           type(exc).__name__)


@router.get("/{job_id}", response_model=JobOut, responses=errors(404, 429))
async def get_job(
    job_id: JobId, request: Request, watcher: WatcherDep, caller: CallerDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description=(
        "Seconds to wait for a change (0-30). Answers as soon as the job's sequence is past "
        "`after` or the job is final, else with the job as it is when the wait ends"))] = 0,
    after: Annotated[int | None, Query(ge=0, description=(
        "The sequence the client has; without it, `wait` waits for the next change"))] = None,
) -> JobOut:
    """The job: status, steps, text so far, reply or error. Long-poll with `wait` and
    `after`; plain polling (no parameters) answers at once."""
    job = await current(request, await watcher.read(job_id), caller)
    if wait > 0:
        seen = job.sequence if after is None else after
        slot = await take_slot(request, caller)
        try:
            job = await current(request, await watcher.wait_past(job_id, after=seen,
                                                                 timeout_s=wait), caller)
        finally:
            await give_back(request, caller, slot)
    return JobOut.of(job)


@dataclass(frozen=True)
class StreamStart:
    seen: int  # the sequence the client has
    slot: str  # the person's follower slot the stream holds
    follow: Following  # the job's follower, registered before the stream's first read


async def stream_start(
    job_id: JobId, request: Request, watcher: WatcherDep, caller: CallerDep,
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", pattern=r"^\d{1,18}$",
        description="The last event id received (sent back by EventSource on reconnect)")] = None,
    after: Annotated[int | None, Query(ge=0, description=(
        "Same as Last-Event-ID, for clients that cannot set headers"))] = None,
) -> AsyncIterator[StreamStart]:
    """Where the stream starts (the sequence the client has), its follower and its follower
    slot; 404 for an unknown job, 204 when the client already has the final state
    (EventSource then stops reconnecting), 429 when the person holds too many streams.

    The follower is registered before the job is read and kept until the response is sent
    (FastAPI ends a dependency with yield after it): the stream starts from this read, one
    read of the job per stream instead of two, on the path to its first event."""
    seen = int(last_event_id) if last_event_id is not None else (after if after is not None
                                                                  else -1)
    with watcher.following(job_id) as follow:
        read = await follow.first()
        job = await current(request, read, caller)
        if job is not read:  # ended just now (its worker died): the stream starts from that
            follow.saw(job)
        if job.status.is_final and job.sequence <= seen:
            raise NoContent()
        yield StreamStart(seen=seen, slot=await take_slot(request, caller), follow=follow)


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={204: {"description": "The client already has the final state: "
                             "EventSource stops reconnecting"}, **stream_errors(404, 429)})
async def job_events(job_id: JobId, watcher: WatcherDep, request: Request, caller: CallerDep,
                     start: Annotated[StreamStart, Depends(stream_start)]
                     ) -> AsyncIterator[JobOut]:
    """Server-Sent Events: one event per change, `id:` = the job's sequence, `data:` = the
    whole job (changes that land together arrive as one event). Resumes after
    `Last-Event-ID`; ends after the final state (and after MYSISTERDB_SSE_MAX_S, 300 s:
    EventSource reconnects)."""
    slots: FollowerSlots | None = request.app.state.followers
    max_s: float = request.app.state.settings.sse_max_s

    renewed = asyncio.get_running_loop().time()  # the slot was taken just now

    async def renew() -> None:
        # Before a wait (<= SSE_WAIT_S), once SSE_WAIT_S has passed since the last renewal:
        # the lease (keys.follower_lease_s, 60 s) never lapses under a live stream, and a
        # stream of many quick changes renews once, not at each change.
        nonlocal renewed
        now = asyncio.get_running_loop().time()
        if slots is not None and now - renewed >= SSE_WAIT_S:
            await run_in_threadpool(slots.renew, caller.person or "", start.slot)
            renewed = now

    try:
        async for job in changes(start.follow, seen=start.seen, max_s=max_s, renew=renew):
            yield event(job)
    finally:
        await give_back(request, caller, start.slot)


async def changes(follow: Following, *, seen: int, max_s: float,
                  renew: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Job]:
    """Each change of the followed job past `seen` (one subscription, at most one read per
    change), until it is final or gone, or `max_s` has passed."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + max_s  # then EventSource resumes it with Last-Event-ID
    while (left := ends - loop.time()) > 0:
        if renew is not None:
            await renew()
        job = await follow.past(seen, timeout_s=min(left, SSE_WAIT_S))
        if job is None:
            return  # deleted: a reconnect gets 404
        if job.sequence > seen:
            seen = job.sequence
            yield job
        if job.status.is_final:
            return


def event(job: Job) -> JobOut:
    # FastAPI documents `data` from the route's item type (JobOut) and passes a
    # ServerSentEvent through as it is: that is how the event gets its id.
    return cast(JobOut, ServerSentEvent(data=JobOut.of(job), id=str(job.sequence),
                                        retry=SSE_RETRY_MS))


@router.post("/{job_id}/cancel", response_model=JobOut, responses=errors(404, 409))
def cancel_job(job_id: JobId, lifecycle: LifecycleDep, caller: CallerDep) -> JobOut:
    """Cancel a queued or running job (the running task is terminated, best effort). The job
    ends `cancelled` with no error; the step it was in (or waiting for) is `cancelled`."""
    return JobOut.of(lifecycle.cancel(job_id, person=caller.person or ""))


@router.post("/{job_id}/retry", status_code=202, response_model=JobOut,
             responses={**ACCEPTED, **errors(404, 409, 429)})
def retry_job(job_id: JobId, service: ChatServiceDep, response: Response) -> JobOut:
    """Send a failed, incomplete or cancelled turn again: a new job for the same turn slot,
    re-using the stored user message. 202 + Location, like a submit."""
    job = service.retry(job_id)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return JobOut.of(job)
