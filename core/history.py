"""The conversation history: the context library's Redis store, given our key layout."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from context.redis_store import RedisHistoryStore
from core import keys

if TYPE_CHECKING:
    from context.vectors import RedisVectorStore


def history_store(client: redis.Redis) -> RedisHistoryStore:
    return RedisHistoryStore(client, key_of=keys.conv_key)


def vector_store(client: redis.Redis) -> RedisVectorStore:
    """The messages' embeddings (semantic recall), beside the history.  Imported here, not at
    the top: numpy comes with it, and the API never needs it."""
    from context.vectors import RedisVectorStore

    return RedisVectorStore(client, key_of=keys.conv_key)
