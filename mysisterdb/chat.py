"""Submitting a prompt: validate, store the user's message, create the job, enqueue it.

The message and the job are written before the 202 leaves: a message that got a 202 is
never lost, whatever becomes of its job. Bad input is refused before anything is written.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from context.redis_store import RedisHistoryStore
from context.tokens import count_tokens
from context.types import Message
from mysisterdb import keys
from mysisterdb.errors import (
    InvalidInput,
    MessageTooLarge,
    QueueFull,
    StoreUnavailable,
)
from mysisterdb.jobs import JobStore
from mysisterdb.models import ErrorCode, Job, JobError, JobStatus, iso
from mysisterdb.monitoring import CHAT_QUEUE, waiting_counts
from mysisterdb.redis_client import MAX_TRANSACTION_ATTEMPTS, TransactionFailed, lost_connection

logger = logging.getLogger(__name__)

CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
PREVIEW_CHARS = 200
RETRY_AFTER_S = 5  # a prompt takes seconds; a client retrying sooner would only add load

Enqueue = Callable[[str], None]


def check_conversation_id(conversation_id: str) -> str:
    if not CONVERSATION_ID.fullmatch(conversation_id):
        raise InvalidInput("conversation_id は英数字・-・_ の1〜64文字で指定してください。")
    return conversation_id


@dataclass
class ChatService:
    redis: redis.Redis
    jobs: JobStore
    history: RedisHistoryStore
    enqueue: Enqueue
    max_message_chars: int
    max_message_tokens: int
    max_queue_depth: int

    def validate(self, *, conversation_id: str, text: str) -> tuple[str, int]:
        """The trimmed text and its token count, or InvalidInput."""
        check_conversation_id(conversation_id)
        text = text.strip()
        if not text:
            raise InvalidInput("メッセージが空です。何か書いてから送ってください。")
        if len(text) > self.max_message_chars:
            raise MessageTooLarge(
                f"メッセージが長すぎます（最大 {self.max_message_chars} 文字）。")
        tokens = count_tokens(text)
        if tokens > self.max_message_tokens:
            raise MessageTooLarge(
                f"メッセージが長すぎます（{tokens} トークン、最大 {self.max_message_tokens}）。")
        return text, tokens

    def submit(self, *, conversation_id: str, text: str,
               idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Store and enqueue a prompt; (job, created). A known idempotency key returns its job."""
        text, tokens = self.validate(conversation_id=conversation_id, text=text)
        if idempotency_key is not None:
            if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise InvalidInput("Idempotency-Key は表示可能な ASCII 1〜128 文字にしてください。")
            known = self._known_job(idempotency_key)
            if known is not None:
                return known, False
        self._check_backpressure()
        job, created = self._store(conversation_id=conversation_id, job_id=uuid.uuid4().hex,
                                   text=text, tokens=tokens, idempotency_key=idempotency_key)
        if created:
            self._enqueue(job)
        return job, created

    def _known_job(self, key: str) -> Job | None:
        raw = self.redis.get(keys.idempotency(key))
        return self.jobs.find(raw.decode() if isinstance(raw, bytes) else str(raw)) if raw else None

    def _check_backpressure(self) -> None:
        waiting = waiting_counts(self.redis)[CHAT_QUEUE]
        if waiting >= self.max_queue_depth:
            logger.warning("queue full (%d waiting): refusing a prompt with 429", waiting)
            raise QueueFull(retry_after_s=RETRY_AFTER_S)

    def _store(self, *, conversation_id: str, job_id: str, text: str, tokens: int,
               idempotency_key: str | None) -> tuple[Job, bool]:
        """Turn, message, job and idempotency key in one transaction: never one without the
        others, no hole in the turns after a failure, and a key never points at nothing."""
        watched = [keys.conv_turn(conversation_id)]
        if idempotency_key is not None:
            watched.append(keys.idempotency(idempotency_key))
        with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_TRANSACTION_ATTEMPTS):
                try:
                    pipe.watch(*watched)
                    other = self._known_job(idempotency_key) if idempotency_key else None
                    if other is not None:  # a concurrent request with the same key won
                        return other, False
                    return self._write(pipe, conversation_id=conversation_id, job_id=job_id,
                                       text=text, tokens=tokens,
                                       idempotency_key=idempotency_key), True
                except redis.WatchError as exc:
                    stored = self.jobs.find(job_id) if lost_connection(exc) else None
                    if stored is not None:  # EXEC was applied; only its reply was lost
                        return stored, True
        raise TransactionFailed("could not store the message (too much contention)")

    def _write(self, pipe: Pipeline, *, conversation_id: str, job_id: str, text: str,
               tokens: int, idempotency_key: str | None) -> Job:
        turn_key = keys.conv_turn(conversation_id)
        turn = int(pipe.get(turn_key) or 0) + 1
        job = Job(id=job_id, conversation_id=conversation_id, turn=turn,
                  input_preview=text[:PREVIEW_CHARS])
        message = Message(seq=2 * turn - 1, role="user", text=text, tokens=tokens,
                          created_at=iso(job.created_at) or "", job_id=job_id)
        pipe.multi()
        pipe.set(turn_key, turn)
        self.jobs.create(job, pipe=pipe)
        pipe.sadd(keys.conversations(), conversation_id)
        self.history.append(conversation_id, message, pipe=pipe)
        if idempotency_key is not None:
            pipe.set(keys.idempotency(idempotency_key), job_id, ex=keys.idempotency_ttl_s)
        pipe.execute()
        return job

    def _enqueue(self, job: Job) -> None:
        try:
            self.enqueue(job.id)
        except Exception as exc:
            logger.error("could not enqueue job %s: %s", job.id, exc)
            self._fail_unqueued(job)
            raise StoreUnavailable() from exc

    def _fail_unqueued(self, job: Job) -> None:
        # Best effort: Redis is likely what failed; if so the queue-timeout reaper ends it.
        try:
            self.jobs.finalize(job.id, status=JobStatus.FAILED, error=JobError(
                code=ErrorCode.ENQUEUE_FAILED.value,
                message="メッセージは保存しましたが、処理を開始できませんでした。"))
        except redis.RedisError as exc:
            logger.warning("job %s left queued without a message: %s", job.id, exc)
