"""A background task queued at most once per conversation at a time (the summary, the
embedding of new messages).

A Redis flag per conversation holds the queued task's token, with a lifetime above the
task's own: a second request while one is queued or running queues nothing, only the task
holding the token releases the flag (compare-and-delete), and a task that died without
releasing it is forgotten when the flag expires.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from core.ports import Broker
from core.redis_client import delete_if_value
from workers.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OncePerConversation:
    what: str  # for the logs: "summary", "embedding"
    send: Callable[[Broker, str, str], None]  # (broker, conversation id, token)
    flag_of: Callable[[str], str]
    ttl_s: int

    def request(self, rt: Runtime, conversation_id: str) -> bool:
        """Queue the task unless one is already queued or running for the conversation."""
        flag, token = self.flag_of(conversation_id), uuid.uuid4().hex
        if not rt.redis.set(flag, token, nx=True, ex=self.ttl_s):
            return False
        try:
            if rt.lifecycle.broker is None:
                raise RuntimeError(f"no broker to queue the {self.what} of {conversation_id}")
            self.send(rt.lifecycle.broker, conversation_id, token)
        except Exception:
            self.release(rt, conversation_id, token)
            raise
        return True

    def keep(self, rt: Runtime, conversation_id: str, token: str) -> None:
        """A retry is queued: the flag stays the task's for another full lifetime."""
        flag = self.flag_of(conversation_id)
        if token and rt.redis.get(flag) == token.encode():
            rt.redis.expire(flag, self.ttl_s)

    def release(self, rt: Runtime, conversation_id: str, token: str) -> None:
        try:
            delete_if_value(rt.redis, self.flag_of(conversation_id), token)
        except Exception as exc:  # the flag's lifetime releases it anyway
            logger.warning("%s flag of %s not released: %s", self.what, conversation_id, exc)
