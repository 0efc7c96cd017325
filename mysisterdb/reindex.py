"""`mysisterdb reindex`: rebuild the recall index of stored conversations, service running.

Needed once after an upgrade that changes how messages are cut into terms (the analyser
in context/terms.py): searches would otherwise look up new terms in an index of old ones.
Each conversation is rebuilt by `RedisHistoryStore.rebuild_index`: the new index is built
beside the live one in bounded batches while the API and workers keep appending (to both)
and searching (the live one), then switched to in one step.  An interrupted run is resumed
by the next.

`mysisterdb reindex --embeddings` instead queues the embedding of every stored message
(semantic recall, docs/context.md "Meaning"): one backfill task per conversation on the
summary queue, which embeds 100 messages (one batch request) and queues itself for the
rest, skipping messages that already have a vector.  The workers do the work, within their
time limits, beside the service; run it again to resume after a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TextIO

from redis import Redis, RedisError

from core import keys
from core.history import history_store
from core.ports import Broker

logger = logging.getLogger(__name__)

EXIT_DONE = 0
EXIT_FAILED = 1


def _conversations(client: Redis) -> list[str]:
    raw = client.sscan_iter(keys.conversations(), count=1000)
    return sorted(c.decode() if isinstance(c, bytes) else str(c) for c in raw)


def reindex_all(*, redis: Redis, conversation_ids: Iterable[str] | None, batch: int,
                pause_s: float, out: TextIO) -> int:
    """Rebuild each conversation's index; print one line per conversation and a total.
    Returns 1 if any conversation failed (the others are still done), else 0."""
    store = history_store(redis)
    cids = list(conversation_ids) if conversation_ids else _conversations(redis)
    failed = indexed = 0
    started = time.monotonic()
    for cid in cids:
        try:
            count = store.rebuild_index(cid, batch=batch, pause_s=pause_s)
        except (RedisError, RuntimeError) as exc:
            failed += 1
            logger.warning("conversation %s: re-index failed: %s", cid, exc)
            print(f"{cid}: FAILED ({type(exc).__name__}: {exc}); rerun to resume", file=out)
            continue
        indexed += count
        print(f"{cid}: {count} messages indexed", file=out)
    print(f"reindex: {len(cids) - failed} of {len(cids)} conversations, {indexed} messages, "
          f"{time.monotonic() - started:.1f} s", file=out)
    return EXIT_FAILED if failed else EXIT_DONE


def queue_embeddings(*, redis: Redis, broker: Broker, conversation_ids: Iterable[str] | None,
                     out: TextIO) -> int:
    """Queue one embedding backfill per conversation (from its first message)."""
    cids = list(conversation_ids) if conversation_ids else _conversations(redis)
    for cid in cids:
        broker.request_embedding(cid, after_seq=0)
    print(f"reindex --embeddings: {len(cids)} conversations queued; the summary worker "
          "embeds them 100 messages at a time", file=out)
    return EXIT_DONE
