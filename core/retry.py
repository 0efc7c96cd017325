"""A failed, incomplete or cancelled turn sent again: a new job for the same turn, re-using the
user's stored message, placed in the line at its turn (see core/lifecycle.py's docstring)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

from redis.client import Pipeline

from context.types import user_seq
from core import keys
from core.access import OWNER
from core.errors import Conflict, NotFound
from core.jobs import JobStore
from core.models import Job, JobStatus
from core.records import touch
from core.redis_client import run_transaction, to_str

if TYPE_CHECKING:
    from core.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

def retry(lc: Lifecycle, job_id: str) -> Job:
    """A new job for the turn of a failed, incomplete or cancelled job, re-using its
    stored message, placed in the line at its turn (see the module docstring)."""
    new_id = uuid.uuid4().hex
    job, dispatch = run_transaction(
        lc.redis, lambda pipe: _retry_once(lc, pipe, job_id, new_id),
        recover=lambda: _retried(lc, new_id), what=f"retry {job_id}")
    logger.info("job %s retries %s (turn %d)%s", job.id, job_id, job.turn,
                "" if dispatch else ", waiting for its turn")
    if dispatch and lc.redis.zscore(keys.outbox(), job.id) is not None:
        lc.publish_now(job.id)
    return job


def _retried(lc: Lifecycle, new_id: str) -> tuple[Job, bool] | None:
    job = lc.jobs.find(new_id)
    return (job, True) if job is not None else None  # the sweep publishes if needed


def _retry_once(lc: Lifecycle, pipe: Pipeline, job_id: str, new_id: str) -> tuple[Job, bool]:
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
    dispatch = _retry_dispatches(lc, pipe, line_key, turn)
    job = Job(id=new_id, conversation_id=cid, turn=turn, input_preview=old.input_preview,
              retry_of=job_id, owner=old.owner)
    pipe.multi()
    JobStore.create(pipe, job)
    touch(pipe, cid, old.owner or OWNER)
    if dispatch:
        JobStore.put_in_outbox(pipe, new_id, at_epoch=time.time())
    pipe.execute()
    return job, dispatch


def _retry_dispatches(lc: Lifecycle, pipe: Pipeline, line_key: str, turn: int) -> bool:
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
