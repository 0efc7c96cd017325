"""Deleting a conversation: its live jobs end cancelled and go with every key of it, in one
transaction, so no late worker can write into it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.client import Pipeline

from core import keys
from core.access import OWNER
from core.jobs import JobStore
from core.models import JobStatus
from core.outcomes import Deleted, Outcome, apply_outcome
from core.records import record_final, stored_owner
from core.redis_client import run_transaction, to_str

if TYPE_CHECKING:
    from core.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

def delete_conversation(lc: Lifecycle, conversation_id: str) -> Deleted | None:
    """End its live jobs as cancelled and delete them, its messages, index, summary,
    line, turn counter and list entries in one transaction; None if nothing existed."""
    deleted = run_transaction(lc.redis,
                              lambda pipe: _delete_once(lc, pipe, conversation_id),
                              what=f"delete {conversation_id}")
    if deleted is not None:
        for job_id in deleted.stopped:
            lc.stop_task(job_id)
        logger.info("conversation %s deleted (%d jobs, %d stopped)", conversation_id,
                    deleted.jobs, len(deleted.stopped))
    return deleted


def _delete_once(lc: Lifecycle, pipe: Pipeline, cid: str) -> Deleted | None:
    own = [keys.conv_turn(cid), keys.conv_jobs(cid), keys.conv_active(cid),
           keys.conv_summarizing(cid), keys.conv_embedding(cid), keys.conv_owner(cid),
           keys.conv_alternatives(cid)]
    pipe.watch(*own)
    owner = stored_owner(pipe.get(keys.conv_owner(cid)), existed=True)
    store_keys = lc.history.conversation_keys(cid, watching=pipe)
    job_ids = sorted({to_str(v) for v in pipe.hvals(keys.conv_jobs(cid))}
                     | {to_str(v) for v in pipe.zrange(keys.conv_active(cid), 0, -1)})
    listed = pipe.zscore(keys.conversations_by_activity(), cid) is not None
    if not job_ids and not listed and not pipe.exists(*own, *store_keys):
        return None
    if job_ids:  # WATCH with no key is an error: an imported conversation has no jobs
        pipe.watch(*(keys.job(j) for j in job_ids))
    live = [job for j in job_ids if (job := JobStore.read_watched(pipe, j)) is not None
            and not job.status.is_final]
    for job in live:
        job.previous_status = job.status
        apply_outcome(job, Outcome.cancelled())
    pipe.multi()
    for job in live:
        record_final(lc._metrics, job, pipe=pipe)
    JobStore.forget(pipe, job_ids)
    pipe.delete(*own, *store_keys)
    pipe.srem(keys.conversations(), cid)
    pipe.zrem(keys.conversations_by_activity(), cid)
    pipe.zrem(keys.person_conversations(owner or OWNER), cid)
    pipe.execute()
    return Deleted(jobs=len(job_ids), stopped=[j.id for j in live
                                               if j.previous_status is JobStatus.IN_PROGRESS])
