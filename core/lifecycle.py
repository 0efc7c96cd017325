"""A job's whole life: submit, claim, steps, end, hand-over; the rest in rooms of its own.

    core/outcomes.py  the values and pure rules (Outcome, Limits, next_head)
    core/states.py    which status may follow which (checked before every write)
    core/retry.py     a failed turn sent again
    core/turns.py     regenerate, continue, edit, choose (the newest turn)
    core/sweep.py     the dead-job rules and the sweep
    core/removal.py   deleting a conversation

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
from datetime import datetime

import redis
from redis.client import Pipeline

from context.redis_store import RedisHistoryStore
from context.types import Message, user_seq
from core import keys, progress, removal, retry, sweep, turns
from core.access import OWNER
from core.alternatives import Alternatives
from core.errors import (
    CONVERSATION_NOT_FOUND,
    JOB_NOT_FOUND,
    Conflict,
    ErrorCode,
    IdempotencyKeyReused,
    NotFound,
)
from core.incidents import IncidentLog, is_incident
from core.jobs import JobStore
from core.metrics import MetricsRecorder
from core.models import Job, JobStatus, StepName, StepStatus, iso, utcnow
from core.outcomes import (
    Claim,
    ClaimStatus,
    Deleted,
    JobGone,
    Limits,
    Outcome,
    StepDone,
    Submitted,
    SweepReport,
    apply_outcome,
    idempotency_value,
    next_head,
    parse_idempotency_value,
)
from core.ports import Broker
from core.records import owned_by, record_final, stored_owner, touch
from core.redis_client import MAX_TRANSACTION_ATTEMPTS, TransactionFailed, run_transaction, to_str

__all__ = ["Claim", "ClaimStatus", "Deleted", "JobGone", "Lifecycle", "Limits", "Outcome",
           "StepDone", "Submitted", "SweepReport", "apply_outcome", "next_head", "owned_by", "stored_owner",
           "touch"]

logger = logging.getLogger(__name__)

PREVIEW_CHARS = 200


def _note_start(pipe: Pipeline, job: Job) -> None:
    """The time of the latest start (read by health), in the claim's write."""
    if job.started_at is not None:
        pipe.set(keys.last_job_started_at(), str(job.started_at.timestamp()))


class Lifecycle:
    def __init__(self, *, client: redis.Redis, history: RedisHistoryStore, limits: Limits,
                 broker: Broker | None) -> None:
        self.redis = client
        self.jobs = JobStore(client)
        self.history = history
        self.limits = limits
        self.broker = broker
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
        if submitted.created and (submitted.head if submitted.head is not None
                                  else self.redis.zscore(keys.outbox(), job_id) is not None):
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
        current, stored = pipe.mget(turn_key, owner_key)  # one round trip, not two
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
        return Submitted(job=job, created=True, head=is_head)

    # -- publish ------------------------------------------------------------------------

    def publish_now(self, job_id: str) -> bool:
        """Send the job's broker message and take it out of the outbox; on failure it stays
        there and the sweep sends it."""
        if self.broker is None:
            return False
        try:
            self.broker.publish_chat(job_id)
            self.jobs.sent(job_id, at_epoch=time.time())
        except Exception as exc:  # Redis or the broker blinked: the outbox keeps it
            logger.warning("job %s: publish failed (%s); the sweep sends it", job_id, exc)
            return False
        return True

    # -- claim --------------------------------------------------------------------------

    def claim(self, job_id: str) -> Claim:
        """Start the job if it is queued, never started and the head of its line. One read,
        then one script that writes the start only if the record is still the one read and
        the job heads its line (`JobStore.write_if_unchanged`): two round trips, on the path
        to the first text."""
        write_id = uuid.uuid4().hex
        claim = self._claim(job_id, write_id)
        if claim.status is ClaimStatus.DUPLICATE and claim.job is not None:
            self.reap(claim.job)  # a copy of a dead job's message: end it now
        elif claim.status is ClaimStatus.EXPIRED:
            self.reap(self.jobs.get(job_id))
        elif claim.status is ClaimStatus.NOT_HEAD and claim.job is not None:
            self._clear_dead_head(claim.job.conversation_id)
        return claim

    def _claim(self, job_id: str, write_id: str) -> Claim:
        job = self.jobs.find(job_id)
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            if job is None:
                return Claim(ClaimStatus.GONE)
            if job.status.is_final:
                return Claim(ClaimStatus.FINAL, job)
            if job.status is not JobStatus.QUEUED or job.attempts > 0:
                return Claim(ClaimStatus.DUPLICATE, job)
            if self.death(job) is ErrorCode.EXPIRED:
                return Claim(ClaimStatus.EXPIRED, job)
            based_on, now = job.write_id, utcnow()
            job.status, job.attempts = JobStatus.IN_PROGRESS, job.attempts + 1
            job.started_at = job.heartbeat_at = now
            job.worker_pid = os.getpid()
            # The claim starts the first step: its own write would be one more round trip.
            first = job.step(StepName.LOAD_HISTORY)
            first.status, first.started_at = StepStatus.IN_PROGRESS, now
            written = self.jobs.write_if_unchanged(
                job, based_on=based_on, write_id=write_id,
                head_of=keys.conv_active(job.conversation_id),
                after=_note_start)
            if written is job:
                return Claim(ClaimStatus.CLAIMED, job)
            if written is False:  # another job heads the line: as it is now
                return Claim(ClaimStatus.NOT_HEAD, self.jobs.find(job_id))
            job = written if isinstance(written, Job) else None  # changed meanwhile, or gone
        raise TransactionFailed(f"claim {job_id}: no write after {MAX_TRANSACTION_ATTEMPTS} "
                                "attempts")

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
        progress.start_step(self.jobs, job_id, name)

    def finish_step(self, job_id: str, name: StepName, *, detail: str | None) -> Job:
        return progress.finish_step(self.jobs, job_id, name, detail=detail)

    def advance(self, job_id: str, *, done: StepName, detail: str | None,
                start: StepName, known: Job | None = None,
                earlier: StepDone | None = None, at: datetime | None = None,
                text: str | None = None) -> Job:
        return progress.advance(self.jobs, self._metrics, job_id, done=done, detail=detail,
                                start=start, known=known, earlier=earlier, at=at, text=text)

    def show_text(self, job_id: str, whole: str, *, known: Job | None = None) -> Job | None:
        return progress.show_text(self.jobs, job_id, whole, known=known)

    # -- end ----------------------------------------------------------------------------

    def end(self, job_id: str, outcome: Outcome, *, known: Job | None = None) -> Job | None:
        """End a still-active job; None if it had already ended. Writes status, steps,
        reply, incident and metrics, takes the job out of its line and, if it was the head,
        puts the next turn in the outbox: all in one transaction. Then publishes it. With
        `known` (the record as this process last wrote it; it is mutated), the first attempt
        checks the stored stamp instead of reading the record back."""
        write_id = uuid.uuid4().hex
        hint = [known]

        def attempt(pipe: Pipeline) -> tuple[Job | None, str | None]:
            based_on, hint[0] = hint[0], None  # a retry reads the record
            return self._end_once(pipe, job_id, outcome, write_id, known=based_on)

        ended, next_id = run_transaction(
            self.redis, attempt, recover=lambda: self._ended_by_us(job_id, write_id),
            what=f"end {job_id}")
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

    def _end_once(self, pipe: Pipeline, job_id: str, outcome: Outcome, write_id: str, *,
                  known: Job | None = None) -> tuple[Job | None, str | None]:
        job, line = JobStore.watch_known(pipe, known) if known is not None else (None, [])
        if job is None:
            pipe.watch(keys.job(job_id))
            job = JobStore.read_watched(pipe, job_id)
            if job is None or job.status.is_final:
                return None, None
            line_key = keys.conv_active(job.conversation_id)
            pipe.watch(line_key)
            line = pipe.zrange(line_key, 0, 1)
        next_id = next_head(job, [to_str(v) for v in line])
        previous = job.status
        done_before = {s.name for s in job.steps if s.status is StepStatus.COMPLETED}
        apply_outcome(job, outcome)
        store_reply = (turns.reply_writer(self, pipe, job, outcome.reply)
                       if outcome.reply is not None and job.status is JobStatus.COMPLETED
                       else None)
        pipe.multi()
        self.jobs.write(pipe, job, write_id=write_id)
        touch(pipe, job.conversation_id, job.owner or OWNER)
        if store_reply is not None:
            store_reply(pipe)
        record_final(self._metrics, job, pipe=pipe, done_before=done_before)
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
        # The status it had when *we* ended it decides whether a process must be stopped.
        if ended.previous_status is not JobStatus.QUEUED:
            self.stop_task(job_id)
        return ended

    def stop_task(self, job_id: str) -> None:
        """Terminate the task of a job that was running when we ended it: the slot is free
        now rather than at the task's next write. Best effort: a lost revoke leaves a task
        whose next write finds its job over (JobGone)."""
        if self.broker is None:
            return
        try:
            self.broker.stop_chat(job_id)
        except Exception as exc:
            logger.warning("job %s: ended, but its task was not stopped (%s)", job_id, exc)

    # -- in rooms of their own ----------------------------------------------------------

    def retry(self, job_id: str) -> Job:
        return retry.retry(self, job_id)

    def regenerate(self, *, conversation_id: str, turn: int, person: str = OWNER) -> Job:
        return turns.regenerate(self, conversation_id=conversation_id, turn=turn, person=person)

    def continue_turn(self, *, conversation_id: str, turn: int, person: str = OWNER) -> Job:
        return turns.continue_turn(self, conversation_id=conversation_id, turn=turn,
                                   person=person)

    def edit_message(self, *, conversation_id: str, turn: int, text: str, tokens: int,
                     person: str = OWNER) -> Job:
        return turns.edit_message(self, conversation_id=conversation_id, turn=turn,
                                  person=person, text=text, tokens=tokens)

    def choose(self, *, conversation_id: str, turn: int, index: int,
               person: str = OWNER) -> Alternatives:
        return turns.choose(self, conversation_id=conversation_id, turn=turn, person=person,
                            index=index)

    def delete_conversation(self, conversation_id: str) -> Deleted | None:
        return removal.delete_conversation(self, conversation_id)

    def death(self, job: Job) -> ErrorCode | None:
        return sweep.death(self, job)

    def reap(self, job: Job, *, by: str = "スイープ") -> Job:
        return sweep.reap(self, job, by=by)

    def sweep(self, *, outbox_grace_s: float | None = None) -> SweepReport:
        return sweep.sweep(self, outbox_grace_s=outbox_grace_s)
