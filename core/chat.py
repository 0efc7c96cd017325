"""Submitting a prompt: validate, refuse when the backlog is full, hand it to the lifecycle.

"Full" is derived from real capacity (`mysisterdb/capacity.py`): the chat slots online and the
recent reply time say how long a new prompt would wait; past MYSISTERDB_MAX_QUEUE_WAIT_S
(or MYSISTERDB_MAX_QUEUE_DEPTH prompts) the answer is 429 with the time the backlog needs to
drain back under that bound as Retry-After.

The lifecycle stores the message and the job in one transaction before the 202 leaves: a
message that got a 202 is never lost, and it runs (or ends with a clear error). Bad input is
refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from context.tokens import count_tokens
from core import contract
from core.access import OWNER
from core.errors import (
    CONVERSATION_NOT_FOUND,
    JOB_NOT_FOUND,
    InvalidInput,
    MessageTooLarge,
    NotFound,
    QueueFull,
)
from core.lifecycle import Lifecycle, Submitted, owned_by
from core.models import Job
from core.monitoring import read_admission
from core.namespaces import internal_id
from core.ratelimit import SubmitLimiter

logger = logging.getLogger(__name__)



def request_digest(*, conversation_id: str, text: str) -> str:
    """What an Idempotency-Key is bound to: the request as sent (before trimming)."""
    body = json.dumps({"conversation_id": conversation_id, "message": text},
                      ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def check_conversation_id(conversation_id: str) -> str:
    if not contract.matches(contract.CONVERSATION_ID, conversation_id):
        raise InvalidInput("conversation_id は英数字・-・_ の1〜64文字で指定してください。")
    return conversation_id


@dataclass
class ChatService:
    lifecycle: Lifecycle
    max_message_chars: int
    max_message_tokens: int
    max_queue_depth: int
    max_queue_wait_s: float = 60.0
    person: str = OWNER  # who submits: the conversation's owner, or NotFound
    limiter: SubmitLimiter | None = None  # the person's own rate, besides the global cap

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
               idempotency_key: str | None = None) -> Submitted:
        """Store and dispatch a prompt. A known idempotency key returns its job; the same key
        with a different request is refused (IdempotencyKeyReused)."""
        digest = request_digest(conversation_id=conversation_id, text=text)
        text, tokens = self.validate(conversation_id=conversation_id, text=text)
        conversation_id = self.internal(conversation_id)
        if idempotency_key is not None:
            if not contract.matches(contract.IDEMPOTENCY_KEY, idempotency_key):
                raise InvalidInput("Idempotency-Key は表示可能な ASCII 1〜128 文字にしてください。")
            known = self.lifecycle.find_by_key(idempotency_key, owner=self.person,
                                               digest=digest)
            if known is not None:  # a resend: it costs the rate limit nothing
                return Submitted(job=known, created=False)
        self._check_backpressure()
        return self.lifecycle.submit(conversation_id=conversation_id, text=text, tokens=tokens,
                                     owner=self.person, idempotency_key=idempotency_key,
                                     request_digest=digest)

    def retry(self, job_id: str) -> Job:
        """Send a failed, incomplete or cancelled turn again; a new job counts against the
        backlog and the person's rate like a submit."""
        job = self.lifecycle.jobs.find(job_id)
        if job is None or not owned_by(job, self.person):
            raise NotFound(JOB_NOT_FOUND)  # 404 before 429 for an unknown job
        self._check_backpressure()
        return self.lifecycle.retry(job_id)

    # -- the newest turn (core/turns.py): each new job counts like a submit -----------------

    def regenerate(self, *, conversation_id: str, turn: int) -> Job:
        cid = self._admit(conversation_id)
        return self.lifecycle.regenerate(conversation_id=cid, turn=turn, person=self.person)

    def continue_turn(self, *, conversation_id: str, turn: int) -> Job:
        cid = self._admit(conversation_id)
        return self.lifecycle.continue_turn(conversation_id=cid, turn=turn, person=self.person)

    def edit_message(self, *, conversation_id: str, turn: int, text: str) -> Job:
        text, tokens = self.validate(conversation_id=conversation_id, text=text)
        cid = self._admit(conversation_id)
        return self.lifecycle.edit_message(conversation_id=cid, turn=turn, text=text,
                                           tokens=tokens, person=self.person)

    def internal(self, conversation_id: str) -> str:
        """The caller's conversation of that name, as stored (core/namespaces.py)."""
        return internal_id(self.lifecycle, person=self.person, conversation_id=conversation_id)

    def _admit(self, conversation_id: str) -> str:
        """The internal id of the caller's existing conversation: 404 before any 429."""
        check_conversation_id(conversation_id)
        cid = self.internal(conversation_id)
        if self.lifecycle.owner_of(cid) != self.person:
            raise NotFound(CONVERSATION_NOT_FOUND)
        self._check_backpressure()
        return cid

    def _check_backpressure(self) -> None:
        if self.limiter is not None:
            self.limiter.hit(self.person)
        # Not started yet: waiting in the broker or for an earlier turn of their conversation.
        decision = read_admission(self.lifecycle.redis, max_wait_s=self.max_queue_wait_s,
                                  max_depth=self.max_queue_depth)
        if decision.full:
            logger.warning("queue full (%d waiting, cap %d from %d slots x %.1f s replies): "
                           "429, retry after %d s", decision.waiting, decision.cap,
                           decision.capacity.slots, decision.capacity.reply_s,
                           decision.retry_after_s)
            raise QueueFull(retry_after_s=decision.retry_after_s)
