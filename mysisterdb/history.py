"""The conversation history: the context library's Redis store, given our key layout."""

from __future__ import annotations

import redis

from context.redis_store import RedisHistoryStore
from context.vectors import RedisVectorStore
from mysisterdb import keys


def history_store(client: redis.Redis) -> RedisHistoryStore:
    return RedisHistoryStore(client, key_of=keys.conv_key)


def vector_store(client: redis.Redis) -> RedisVectorStore:
    """The messages' embeddings (semantic recall), beside the history."""
    return RedisVectorStore(client, key_of=keys.conv_key)
