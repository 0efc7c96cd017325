"""A job's whole life, in one place: submit, claim, steps, end, hand-over, sweep.

No other module writes a job's status. Every path that ends a job (the worker's child, its
parent after a hard limit or a lost child, the sweep, cancel, `check --repair`) calls
`Lifecycle.end` with one typed `Outcome`.

Turn order by hand-over, and "stored means dispatched", from one mechanism::

    submit ──MULTI: message, job, turn, idempotency key; if the line was empty: outbox──▶ EXEC
      │                                                                       │
      │ 202                                           publish (fast path) ◀───┘
      ▼                                                   │ then take it out of the outbox
    conversation line (msdb:conv:{cid}:active, by turn)   ▼
      head ◀── only the head has a broker message ── Celery "chat" queue ──▶ worker: claim
      │                                                                        │ (head only,
      ▼                                                                        ▼  queued only)
    end(job, outcome) ──MULTI: status, steps, reply, incident, metrics,
                              leave the line; if it was the head: next head into the outbox──▶ EXEC
                                                                          │
                                                         publish the next head (fast path)
    sweep (every second, in the API and in each worker's main process):
      outbox entries older than the grace ──▶ publish   (a crash between EXEC and publish)
      running past hard limit + grace     ──▶ end: failed / worker_lost
      queued past the queue timeout       ──▶ end: failed / expired

A second broker message for a job is harmless: `claim` starts a job only if it is queued,
never started, and the head of its line.

Retry (`retry`) puts a new job for the same turn into the line at its turn, re-using the
user's stored message. If that makes it the head in front of a head that is only queued,
it is dispatched at once (the old head's broker message then finds NOT_HEAD and the old
head is handed the line when the retry ends). If the head in front of it is already
running, the retry waits: a running job that ends while it is not the head hands the line
to the head, which can only be such a waiting retry. So the line stays in turn order and a
conversation never runs two jobs at once.

Deleting a conversation (`delete_conversation`) ends its live jobs as cancelled and
deletes them with every key of the conversation in one transaction: a running job's next
write finds no record (`JobGone`), and its reply, appended only inside `end` after the
job's status is checked in the same transaction, can never land.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

import redis
from redis.client import Pipeline

from context.redis_store import RedisHistoryStore
from context.types import Message, user_seq
from mysisterdb import keys
from mysisterdb.access import OWNER
from mysisterdb.broker import (
    chat_reservations,
    chat_waiting,
    forget_reservation,
    stale_chat_reservations,
)
from mysisterdb.errors import (
    CONVERSATION_NOT_FOUND,
    JOB_NOT_FOUND,
    Conflict,
    ErrorCode,
    IdempotencyKeyReused,
    NotFound,
)
from mysisterdb.incidents import IncidentLog, is_incident
from mysisterdb.jobs import JobStore, Skip
from mysisterdb.metrics import MetricsRecorder
from mysisterdb.models import Job, JobError, JobStatus, StepName, StepStatus, iso, utcnow
from mysisterdb.queueing import Publish
from mysisterdb.redis_client import run_transaction, to_str
from mysisterdb.settings import Settings

logger = logging.getLogger(__name__)

PREVIEW_CHARS = 200
SWEEP_BATCH = 100  # per kind and sweep: a backlog is worked off over a few sweeps


class JobGone(Exception):
    """The job ended under us (cancelled, or ended elsewhere): stop working on it."""


@dataclass(frozen=True)
class Limits:
    """When a job is surely dead, and how soon a lost publish is repeated."""

    hard_limit_s: float
    queue_timeout_s: float
    grace_s: float = 2.0
    outbox_grace_s: float = 2.0
    stale_reservation_s: float = 10.0  # reserved, never started: its worker lost it
    lost_message_s: float = 10.0  # sent, not waiting, not reserved, not started: lost

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(hard_limit_s=settings.task_time_limit, queue_timeout_s=settings.queue_timeout_s,
                   outbox_grace_s=settings.outbox_grace_s)


@dataclass(frozen=True)
class Outcome:
    """How a job ends. A failure becomes `incomplete` if text was generated and kept."""

    status: JobStatus
    code: ErrorCode | None = None
    message: str | None = None  # more precise words than the code's (e.g. the HTTP status)
    reply: Message | None = None
    partial: str | None = None  # the text that arrived before a stream broke
    keep_partial: bool = True
    exception: str = ""
    action: str = ""

    @classmethod
    def completed(cls, reply: Message) -> Outcome:
        return cls(status=JobStatus.COMPLETED, reply=reply)

    @classmethod
    def failed(cls, code: ErrorCode, *, exception: str, action: str, message: str | None = None,
               partial: str | None = None, keep_partial: bool = True) -> Outcome:
        return cls(status=JobStatus.FAILED, code=code, message=message, partial=partial,
                   keep_partial=keep_partial, exception=exception, action=action)

    @classmethod
    def cancelled(cls) -> Outcome:
        return cls(status=JobStatus.CANCELLED, action="cancelled by the user")


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    GONE = "gone"  # no such job (expired record)
    FINAL = "final"  # already ended (cancelled, reaped)
    DUPLICATE = "duplicate"  # started before: a second delivery never runs it again
    NOT_HEAD = "not_head"  # an earlier turn is unfinished; the hand-over dispatches it
    EXPIRED = "expired"  # queued past the queue timeout: ended instead


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    job: Job | None = None


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool


@dataclass(frozen=True)
class Deleted:
    """What deleting a conversation removed; `stopped` were running (their tasks may be
    terminated)."""

    jobs: int
    stopped: list[str]


def idempotency_value(job_id: str, digest: str | None) -> str:
    return f"{job_id}:{digest}" if digest else job_id


def parse_idempotency_value(raw: bytes | str) -> tuple[str, str | None]:
    """(job id, request digest); keys stored before digests existed carry none."""
    job_id, _, digest = to_str(raw).partition(":")
    return job_id, digest or None


@dataclass
class SweepReport:
    published: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


class Lifecycle:
    def __init__(self, *, client: redis.Redis, history: RedisHistoryStore, limits: Limits,
                 publish: Publish | None) -> None:
        self.redis = client
        self.jobs = JobStore(client)
        self.history = history
        self.limits = limits
        self._publish = publish
        self._metrics = MetricsRecorder(client)
        self._incidents = IncidentLog(client)

    # -- submit -------------------------------------------------------------------------

    def submit(self, *, conversation_id: str, text: str, tokens: int, owner: str = OWNER,
               idempotency_key: str | None = None, request_digest: str | None = None) -> Submitted:
        """Store turn, message, job, key and (if it is the head) its outbox entry in one
        transaction, then publish. Stored means it will run: a failed publish stays in the
        outbox for the sweep, so the answer is still 202. A key already used for another
        request (another `request_digest`) raises IdempotencyKeyReused. The first submit
        makes `owner` the conversation's owner; anyone else gets NotFound."""
        job_id = uuid.uuid4().hex
        submitted = run_transaction(
            self.redis, lambda pipe: self._submit_once(
                pipe, conversation_id=conversation_id, job_id=job_id, text=text, tokens=tokens,
                owner=owner, idempotency_key=idempotency_key, digest=request_digest),
            recover=lambda: self._stored(job_id), what=f"submit to {conversation_id}")
        if submitted.created and self.redis.zscore(keys.outbox(), job_id) is not None:
            self.publish_now(job_id)
        return submitted

    def find_by_key(self, idempotency_key: str, *, owner: str = OWNER,
                    digest: str | None = None) -> Job | None:
        """The job `owner` submitted with this key, if it still exists; IdempotencyKeyReused
        if it was submitted with another request."""
        raw = self.redis.get(keys.idempotency(owner, idempotency_key))
        return self._keyed_job(raw, digest) if raw else None

    def owner_of(self, conversation_id: str) -> str | None:
        """Who the conversation belongs to; None if nobody has written in it yet."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.conv_owner(conversation_id))
            pipe.exists(keys.conv_turn(conversation_id), keys.conv_messages(conversation_id))
            stored, exists = pipe.execute()
        return stored_owner(stored, existed=bool(exists))

    def _keyed_job(self, raw: bytes | str, digest: str | None) -> Job | None:
        job_id, stored = parse_idempotency_value(raw)
        job = self.jobs.find(job_id)
        if job is not None and digest and stored and stored != digest:
            raise IdempotencyKeyReused()
        return job

    def _stored(self, job_id: str) -> Submitted | None:
        job = self.jobs.find(job_id)
        return Submitted(job=job, created=True) if job is not None else None

    def check_owner(self, conversation_id: str, person: str) -> None:
        """NotFound unless the conversation is `person`'s or nobody's yet: another person's
        conversation answers exactly like one that does not exist."""
        if self.owner_of(conversation_id) not in (None, person):
            raise NotFound(CONVERSATION_NOT_FOUND)

    def _submit_once(self, pipe: Pipeline, *, conversation_id: str, job_id: str, text: str,
                     tokens: int, owner: str, idempotency_key: str | None,
                     digest: str | None) -> Submitted:
        turn_key, line_key = keys.conv_turn(conversation_id), keys.conv_active(conversation_id)
        owner_key = keys.conv_owner(conversation_id)
        idem_key = keys.idempotency(owner, idempotency_key) if idempotency_key else None
        pipe.watch(turn_key, line_key, owner_key, *([idem_key] if idem_key else []))
        if idem_key and (known := pipe.get(idem_key)):
            other = self._keyed_job(known, digest)
            if other is not None:  # a concurrent request with the same key won
                return Submitted(job=other, created=False)
        current = pipe.get(turn_key)
        stored = pipe.get(owner_key)
        if stored_owner(stored, existed=current is not None) not in (None, owner):
            raise NotFound(CONVERSATION_NOT_FOUND)  # someone else's: as if it did not exist
        turn = int(current or 0) + 1
        is_head = pipe.zcard(line_key) == 0
        job = Job(id=job_id, conversation_id=conversation_id, turn=turn,
                  input_preview=text[:PREVIEW_CHARS], owner=owner)
        message = Message(seq=user_seq(turn), role="user", text=text, tokens=tokens,
                          created_at=iso(job.created_at) or "", job_id=job_id)
        pipe.multi()
        pipe.set(turn_key, turn)
        if stored is None:
            pipe.set(owner_key, owner)
        JobStore.create(pipe, job)
        pipe.sadd(keys.conversations(), conversation_id)
        touch(pipe, conversation_id, owner)
        self.history.append(conversation_id, message, pipe=pipe)
        if idem_key:
            pipe.set(idem_key, idempotency_value(job_id, digest), ex=keys.idempotency_ttl_s)
        if is_head:
            JobStore.put_in_outbox(pipe, job_id, at_epoch=time.time())
        pipe.execute()
        return Submitted(job=job, created=True)

    # -- publish ------------------------------------------------------------------------

    def publish_now(self, job_id: str) -> bool:
        """Send the job's broker message and take it out of the outbox; on failure it stays
        there and the sweep sends it."""
        if self._publish is None:
            return False
        try:
            self._publish(job_id)
            self.jobs.sent(job_id, at_epoch=time.time())
        except Exception as exc:  # Redis or the broker blinked: the outbox keeps it
            logger.warning("job %s: publish failed (%s); the sweep sends it", job_id, exc)
            return False
        return True

    # -- claim --------------------------------------------------------------------------

    def claim(self, job_id: str) -> Claim:
        """Start the job if it is queued, never started and the head of its line."""
        write_id = uuid.uuid4().hex
        claim = run_transaction(self.redis, lambda pipe: self._claim_once(pipe, job_id, write_id),
                                recover=lambda: self._claimed(job_id, write_id),
                                what=f"claim {job_id}")
        if claim.status is ClaimStatus.DUPLICATE and claim.job is not None:
            self.reap(claim.job)  # a copy of a dead job's message: end it now
        elif claim.status is ClaimStatus.EXPIRED:
            self.reap(self.jobs.get(job_id))
        elif claim.status is ClaimStatus.NOT_HEAD and claim.job is not None:
            self._clear_dead_head(claim.job.conversation_id)
        return claim

    def _claimed(self, job_id: str, write_id: str) -> Claim | None:
        job = self.jobs.written(job_id, write_id)
        return Claim(ClaimStatus.CLAIMED, job) if job is not None else None

    def _claim_once(self, pipe: Pipeline, job_id: str, write_id: str) -> Claim:
        pipe.watch(keys.job(job_id))
        job = JobStore.read_watched(pipe, job_id)
        if job is None:
            return Claim(ClaimStatus.GONE)
        line_key = keys.conv_active(job.conversation_id)
        pipe.watch(line_key)
        if job.status.is_final:
            return Claim(ClaimStatus.FINAL, job)
        if job.status is not JobStatus.QUEUED or job.attempts > 0:
            return Claim(ClaimStatus.DUPLICATE, job)
        if self.death(job) is ErrorCode.EXPIRED:
            return Claim(ClaimStatus.EXPIRED, job)
        head = pipe.zrange(line_key, 0, 0)
        if head and to_str(head[0]) != job.id:
            return Claim(ClaimStatus.NOT_HEAD, job)
        now = utcnow()
        job.status, job.attempts = JobStatus.IN_PROGRESS, job.attempts + 1
        job.started_at = job.heartbeat_at = now
        job.worker_pid = os.getpid()
        pipe.multi()
        self.jobs.write(pipe, job, write_id=write_id)
        pipe.set(keys.last_job_started_at(), str(now.timestamp()))
        pipe.execute()
        return Claim(ClaimStatus.CLAIMED, job)

    def _clear_dead_head(self, conversation_id: str) -> None:
        """A line whose head has no live record (expired, or ended without leaving the line
        by a bug or a hand edit) would block its conversation: drop it and hand over."""
        line = self.jobs.line(conversation_id)
        if not line:
            return
        head = self.jobs.find(line[0])
        if head is not None and not head.status.is_final:
            return
        next_id = run_transaction(
            self.redis, lambda pipe: self._drop_head_once(pipe, conversation_id, line[0]),
            what=f"clear the line of {conversation_id}")
        if next_id:
            logger.warning("line of %s: dropped dead head %s, next is %s", conversation_id,
                           line[0], next_id)
            self.publish_now(next_id)

    def _drop_head_once(self, pipe: Pipeline, conversation_id: str, head_id: str) -> str | None:
        line_key = keys.conv_active(conversation_id)
        pipe.watch(line_key, keys.job(head_id))
        first_two = [to_str(v) for v in pipe.zrange(line_key, 0, 1)]
        head = JobStore.read_watched(pipe, head_id)
        if not first_two or first_two[0] != head_id or (head and not head.status.is_final):
            return None
        next_id = first_two[1] if len(first_two) > 1 else None
        pipe.multi()
        pipe.zrem(line_key, head_id)
        if next_id:
            JobStore.put_in_outbox(pipe, next_id, at_epoch=time.time())
        pipe.execute()
        return next_id

    # -- steps --------------------------------------------------------------------------

    def start_step(self, job_id: str, name: StepName) -> None:
        def start(job: Job) -> None:
            step = job.step(name)
            step.status, step.started_at = StepStatus.IN_PROGRESS, utcnow()
            job.heartbeat_at = step.started_at

        if self.jobs.update(job_id, start) is None:
            raise JobGone(job_id)

    def finish_step(self, job_id: str, name: StepName, *, detail: str | None) -> Job:
        def finish(job: Job) -> None:
            step = job.step(name)
            step.status, step.completed_at = StepStatus.COMPLETED, utcnow()
            step.detail = detail
            job.heartbeat_at = step.completed_at

        finished = self.jobs.update(job_id, finish)
        if finished is None:
            raise JobGone(job_id)
        return finished

    def show_text(self, job_id: str, whole: str) -> None:
        """The whole text so far (not a delta): a write repeated after a lost reply from
        Redis can never duplicate text."""
        def show(job: Job) -> None:
            if job.partial_reply == whole:
                raise Skip
            job.partial_reply = whole
            job.heartbeat_at = utcnow()

        if self.jobs.update(job_id, show) is None and self._ended(job_id):
            raise JobGone(job_id)

    def _ended(self, job_id: str) -> bool:
        job = self.jobs.find(job_id)
        return job is None or job.status.is_final

    # -- end ----------------------------------------------------------------------------

    def end(self, job_id: str, outcome: Outcome) -> Job | None:
        """End a still-active job; None if it had already ended. Writes status, steps,
        reply, incident and metrics, takes the job out of its line and, if it was the head,
        puts the next turn in the outbox: all in one transaction. Then publishes it."""
        write_id = uuid.uuid4().hex
        ended, next_id = run_transaction(
            self.redis, lambda pipe: self._end_once(pipe, job_id, outcome, write_id),
            recover=lambda: self._ended_by_us(job_id, write_id), what=f"end {job_id}")
        if ended is None:
            return None
        self._log_end(ended, outcome)
        if next_id:
            self.publish_now(next_id)
        return ended

    def _ended_by_us(self, job_id: str, write_id: str) -> tuple[Job | None, str | None] | None:
        # The hand-over's publish is then left to the sweep (the outbox entry is there).
        job = self.jobs.written(job_id, write_id)
        return (job, None) if job is not None else None

    def _end_once(self, pipe: Pipeline, job_id: str, outcome: Outcome,
                  write_id: str) -> tuple[Job | None, str | None]:
        pipe.watch(keys.job(job_id))
        job = JobStore.read_watched(pipe, job_id)
        if job is None or job.status.is_final:
            return None, None
        line_key = keys.conv_active(job.conversation_id)
        pipe.watch(line_key)
        next_id = next_head(job, [to_str(v) for v in pipe.zrange(line_key, 0, 1)])
        previous = job.status
        apply_outcome(job, outcome)
        pipe.multi()
        self.jobs.write(pipe, job, write_id=write_id)
        touch(pipe, job.conversation_id, job.owner or OWNER)
        if outcome.reply is not None and job.status is JobStatus.COMPLETED:
            self.history.append(job.conversation_id, outcome.reply, pipe=pipe)
        record_final(self._metrics, job, pipe=pipe)
        if is_incident(job):
            self._incidents.record_job(job, exception=outcome.exception, action=outcome.action,
                                       pipe=pipe)
        if next_id:
            JobStore.put_in_outbox(pipe, next_id, at_epoch=time.time())
        pipe.execute()
        job.previous_status = previous
        return job, next_id

    @staticmethod
    def _log_end(job: Job, outcome: Outcome) -> None:
        code = f" ({job.error.code.value})" if job.error else ""
        was = job.previous_status.value if job.previous_status else "?"
        logger.info("job %s %s%s (was %s)", job.id, job.status.value, code, was)
        if is_incident(job):
            logger.warning("incident: %s%s: %s -> %s", job.id, code, outcome.exception,
                           outcome.action)

    def cancel(self, job_id: str, *, person: str = OWNER) -> Job:
        """Cancel `person`'s queued or running job; Conflict if it has already ended."""
        if not owned_by(self.jobs.get(job_id), person):  # 404 for an unknown job
            raise NotFound(JOB_NOT_FOUND)
        ended = self.end(job_id, Outcome.cancelled())
        if ended is None:
            raise Conflict(f"ジョブはすでに終了しています（{self.jobs.get(job_id).status.value}）。")
        return ended

    # -- retry ------------------------------------------------------------------------

    def retry(self, job_id: str) -> Job:
        """A new job for the turn of a failed, incomplete or cancelled job, re-using its
        stored message, placed in the line at its turn (see the module docstring)."""
        new_id = uuid.uuid4().hex
        job, dispatch = run_transaction(
            self.redis, lambda pipe: self._retry_once(pipe, job_id, new_id),
            recover=lambda: self._retried(new_id), what=f"retry {job_id}")
        logger.info("job %s retries %s (turn %d)%s", job.id, job_id, job.turn,
                    "" if dispatch else ", waiting for its turn")
        if dispatch and self.redis.zscore(keys.outbox(), job.id) is not None:
            self.publish_now(job.id)
        return job

    def _retried(self, new_id: str) -> tuple[Job, bool] | None:
        job = self.jobs.find(new_id)
        return (job, True) if job is not None else None  # the sweep publishes if needed

    def _retry_once(self, pipe: Pipeline, job_id: str, new_id: str) -> tuple[Job, bool]:
        pipe.watch(keys.job(job_id))
        old = JobStore.read_watched(pipe, job_id)
        if old is None:
            raise NotFound("指定されたジョブは見つかりませんでした。")
        if not old.status.is_retryable:
            raise Conflict(f"このジョブはやり直せません（{old.status.value}）。やり直せるのは "
                           "failed・incomplete・cancelled のジョブだけです。")
        cid, turn = old.conversation_id, old.turn
        jobs_key, line_key = keys.conv_jobs(cid), keys.conv_active(cid)
        pipe.watch(jobs_key, line_key, keys.conv_messages(cid))
        current = pipe.hget(jobs_key, str(turn))
        if current is None or to_str(current) != job_id:
            raise Conflict("このターンはすでにやり直されています。新しいジョブを確認してください。")
        if not pipe.zcount(keys.conv_messages(cid), user_seq(turn), user_seq(turn)):
            raise Conflict("元のメッセージが残っていないため、やり直せません。")
        dispatch = self._retry_dispatches(pipe, line_key, turn)
        job = Job(id=new_id, conversation_id=cid, turn=turn, input_preview=old.input_preview,
                  retry_of=job_id, owner=old.owner)
        pipe.multi()
        JobStore.create(pipe, job)
        touch(pipe, cid, old.owner or OWNER)
        if dispatch:
            JobStore.put_in_outbox(pipe, new_id, at_epoch=time.time())
        pipe.execute()
        return job, dispatch

    def _retry_dispatches(self, pipe: Pipeline, line_key: str, turn: int) -> bool:
        """Whether the retry of `turn` is dispatched now: it becomes the head, and the head it
        goes in front of (if any) has not started. A running head keeps running; its end
        hands the line to the retry (`next_head`)."""
        head = pipe.zrange(line_key, 0, 0, withscores=True)
        if not head:
            return True
        head_id, head_turn = to_str(head[0][0]), float(head[0][1])
        if head_turn < turn:
            return False  # an earlier turn runs first; the hand-over reaches the retry
        pipe.watch(keys.job(head_id))  # its claim must not slip between our read and EXEC
        current = JobStore.read_watched(pipe, head_id)
        return current is None or current.status is JobStatus.QUEUED

    # -- deleting a conversation --------------------------------------------------------

    def delete_conversation(self, conversation_id: str) -> Deleted | None:
        """End its live jobs as cancelled and delete them, its messages, index, summary,
        line, turn counter and list entries in one transaction; None if nothing existed."""
        deleted = run_transaction(self.redis,
                                  lambda pipe: self._delete_once(pipe, conversation_id),
                                  what=f"delete {conversation_id}")
        if deleted is not None:
            logger.info("conversation %s deleted (%d jobs, %d stopped)", conversation_id,
                        deleted.jobs, len(deleted.stopped))
        return deleted

    def _delete_once(self, pipe: Pipeline, cid: str) -> Deleted | None:
        own = [keys.conv_turn(cid), keys.conv_jobs(cid), keys.conv_active(cid),
               keys.conv_summarizing(cid), keys.conv_embedding(cid), keys.conv_owner(cid)]
        pipe.watch(*own)
        owner = stored_owner(pipe.get(keys.conv_owner(cid)), existed=True)
        store_keys = self.history.conversation_keys(cid, watching=pipe)
        job_ids = sorted({to_str(v) for v in pipe.hvals(keys.conv_jobs(cid))}
                         | {to_str(v) for v in pipe.zrange(keys.conv_active(cid), 0, -1)})
        listed = pipe.zscore(keys.conversations_by_activity(), cid) is not None
        if not job_ids and not listed and not pipe.exists(*own, *store_keys):
            return None
        pipe.watch(*(keys.job(j) for j in job_ids))
        live = [job for j in job_ids if (job := JobStore.read_watched(pipe, j)) is not None
                and not job.status.is_final]
        for job in live:
            job.previous_status = job.status
            apply_outcome(job, Outcome.cancelled())
        pipe.multi()
        for job in live:
            record_final(self._metrics, job, pipe=pipe)
        JobStore.forget(pipe, job_ids)
        pipe.delete(*own, *store_keys)
        pipe.srem(keys.conversations(), cid)
        pipe.zrem(keys.conversations_by_activity(), cid)
        pipe.zrem(keys.person_conversations(owner or OWNER), cid)
        pipe.execute()
        return Deleted(jobs=len(job_ids), stopped=[j.id for j in live
                                                   if j.previous_status is JobStatus.IN_PROGRESS])

    # -- the dead-job rules and the sweep -----------------------------------------------

    def death(self, job: Job) -> ErrorCode | None:
        """Why a job can no longer end by itself, or None while it still can."""
        now, lim = utcnow(), self.limits
        running_for = now - (job.started_at or job.created_at)
        if (job.status is JobStatus.IN_PROGRESS
                and running_for > timedelta(seconds=lim.hard_limit_s + lim.grace_s)):
            return ErrorCode.WORKER_LOST  # the hard limit would have killed it
        if (job.status is JobStatus.QUEUED
                and now - job.created_at > timedelta(seconds=lim.queue_timeout_s)):
            return ErrorCode.EXPIRED
        return None

    def reap(self, job: Job, *, by: str = "スイープ") -> Job:
        """End a job that can no longer end by itself; return it as it now is."""
        code = self.death(job)
        if code is None:
            return job
        cause = (f"開始から {self.limits.hard_limit_s:g} 秒経っても終了の記録がない"
                 if code is ErrorCode.WORKER_LOST
                 else f"投入から {self.limits.queue_timeout_s:g} 秒経っても開始されない")
        logger.error("job %s: %s; ending it", job.id, cause)
        ended = self.end(job.id, Outcome.failed(
            code, exception=cause, action=f"失敗として終了させた（{by}）。会話は次のターンへ進む"))
        return ended or self.jobs.get(job.id)

    def sweep(self, *, outbox_grace_s: float | None = None) -> SweepReport:
        """Publish what the outbox kept too long; end what can no longer end by itself."""
        report, now, lim = SweepReport(), time.time(), self.limits
        grace = lim.outbox_grace_s if outbox_grace_s is None else outbox_grace_s
        for job_id in self.jobs.outbox_due(before_epoch=now - grace)[:SWEEP_BATCH]:
            if self.publish_now(job_id):
                report.published.append(job_id)
        self._resend_lost_reservations(report, now=now)
        self._resend_lost_messages(report, now=now)
        dead = (self.jobs.ids_started_before(now - lim.hard_limit_s - lim.grace_s)[:SWEEP_BATCH]
                + self.jobs.ids_created_before(now - lim.queue_timeout_s)[:SWEEP_BATCH])
        for job_id in dict.fromkeys(dead):
            job = self.jobs.find(job_id)
            if job is not None and self.reap(job).status.is_final:
                report.ended.append(job_id)
        return report


    def _resend_lost_reservations(self, report: SweepReport, *, now: float) -> None:
        """A prompt a worker reserved and never started (it lost its connection, Redis was
        restarted) would wait out the visibility timeout: send it again now."""
        if self._publish is None:
            return
        for lost in stale_chat_reservations(
                self.redis, reserved_before_epoch=now - self.limits.stale_reservation_s,
                limit=SWEEP_BATCH):
            job = self.jobs.find(lost.job_id)
            if job is not None and job.status is JobStatus.QUEUED and job.attempts == 0:
                logger.warning("job %s: reserved %g s ago and never started; sent again",
                               lost.job_id, self.limits.stale_reservation_s)
                if self.publish_now(lost.job_id):
                    forget_reservation(self.redis, lost.tag)
                    report.published.append(lost.job_id)


    def _resend_lost_messages(self, report: SweepReport, *, now: float) -> None:
        """A head sent a while ago that is neither waiting in the broker nor reserved by a
        worker, and not started, lost its message (a task that died before its claim, a
        broker that dropped it): send it again. While the chat queue is not empty the wait
        may be a backlog, so nothing is judged then."""
        if self._publish is None or chat_waiting(self.redis) > 0:
            return
        candidates = self.jobs.dispatched_before(now - self.limits.lost_message_s,
                                                 limit=SWEEP_BATCH)
        if not candidates:
            return
        reserved = {r.job_id for r in chat_reservations(self.redis)}
        for job_id in candidates:
            if job_id in reserved or job_id in report.published:
                continue
            job = self.jobs.find(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                self.jobs.forget_dispatch(job_id)
                continue
            logger.warning("job %s: its message was lost before it started; sent again", job_id)
            if self.publish_now(job_id):
                report.published.append(job_id)


def apply_outcome(job: Job, outcome: Outcome) -> None:
    now = utcnow()
    if outcome.partial is not None:
        job.partial_reply = outcome.partial
    status = outcome.status
    if status is JobStatus.FAILED and outcome.keep_partial and job.partial_reply:
        status = JobStatus.INCOMPLETE
    job.status, job.completed_at = status, now
    job.error = (JobError(code=outcome.code, message=outcome.message or outcome.code.message)
                 if outcome.code is not None else None)
    if outcome.reply is not None:
        job.reply = outcome.reply.text
        job.step(StepName.SAVE).detail = f"reply seq {outcome.reply.seq}"
    for step in job.steps:
        if step.status is StepStatus.IN_PROGRESS:
            step.status, step.completed_at = step_end_status(status), now
        elif step.status is StepStatus.PENDING:
            step.status = StepStatus.SKIPPED
    if status is JobStatus.CANCELLED and StepStatus.CANCELLED not in {s.status for s in job.steps}:
        # Cancelled before a step started: the step it was waiting for says so.
        waiting = next((s for s in job.steps if s.status is StepStatus.SKIPPED), None)
        if waiting is not None:
            waiting.status = StepStatus.CANCELLED


def next_head(job: Job, first_two: list[str]) -> str | None:
    """Whom the end of `job` hands the line to, given the line's first two members.

    The head hands over to the second. A running job that is not the head had a retried
    earlier turn put in front of it while it ran; that retry waits for this end."""
    if first_two[:1] == [job.id]:
        return first_two[1] if len(first_two) > 1 else None
    if job.status is JobStatus.IN_PROGRESS and first_two:
        return first_two[0]
    return None


def touch(pipe: Pipeline, conversation_id: str, owner: str) -> None:
    """The conversation's last activity (inside MULTI), in whole milliseconds (the list's
    `before` cursor is an ISO time with milliseconds): never moves back. In the list of
    everyone's (operators) and of its owner's."""
    now = round(time.time(), 3)
    pipe.zadd(keys.conversations_by_activity(), {conversation_id: now}, gt=True)
    pipe.zadd(keys.person_conversations(owner), {conversation_id: now}, gt=True)


def owned_by(job: Job, person: str) -> bool:
    return (job.owner or OWNER) == person


def stored_owner(raw: bytes | str | None, *, existed: bool) -> str | None:
    """The owner from its key; a conversation from before owners were stored is OWNER's."""
    if raw is not None:
        return to_str(raw)
    return OWNER if existed else None


def step_end_status(status: JobStatus) -> StepStatus:
    if status is JobStatus.COMPLETED:
        return StepStatus.COMPLETED
    return StepStatus.CANCELLED if status is JobStatus.CANCELLED else StepStatus.FAILED


def record_final(metrics: MetricsRecorder, job: Job, *, pipe: Pipeline) -> None:
    metrics.count("jobs", job.status.value, job.error.code.value if job.error else "", pipe=pipe)
    if job.completed_at is None:
        return
    metrics.observe("job_duration", (job.completed_at - job.created_at).total_seconds(),
                    pipe=pipe)
    if job.started_at is not None:
        metrics.observe("celery_task_runtime",
                        (job.completed_at - job.started_at).total_seconds(), "mysisterdb.chat",
                        pipe=pipe)
