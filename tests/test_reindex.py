"""`mysisterdb reindex` as an operator runs it, against a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from context.redis_store import RedisHistoryStore
from core import keys
from mysisterdb.redis_server import RedisServer
from tests.context.chatgen import ChatGenerator, make_message
from tests.context.test_redis_store import _plant_legacy_index
from tests.procs import ROOT

FACT = "枡元さんの誕生日は3月12日だよ"
QUERY = "枡元さんの誕生日いつだっけ？"


def _reindex(server: RedisServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSISTERDB_")}
    env.update({"MYSISTERDB_REDIS_URL": server.url, "MYSISTERDB_LOG_DIR": str(tmp_path)})
    return subprocess.run([sys.executable, "-m", "mysisterdb", "reindex", *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_reindex_command_rebuilds_every_conversation(redis_server: RedisServer,
                                                    redis_client: redis.Redis,
                                                    tmp_path: Path) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    for cid in ("old-a", "old-b"):
        _plant_legacy_index(redis_client, cid, [*ChatGenerator(seed=len(cid)).messages(300),
                                                make_message(301, "user", FACT)])
        redis_client.sadd(keys.conversations(), cid)
    assert store.search("old-a", query=QUERY, before_seq=10**9, limit=1, threshold=0.4) == []
    done = _reindex(redis_server, tmp_path, "--batch", "50", "--pause", "0")
    assert done.returncode == 0, done.stderr
    assert "old-a: 301 messages indexed" in done.stdout
    assert "reindex: 2 of 2 conversations, 602 messages" in done.stdout
    for cid in ("old-a", "old-b"):
        assert store.check_index(cid).ok
        hits = store.search(cid, query=QUERY, before_seq=10**9, limit=1, threshold=0.4)
        assert hits[0].message.text == FACT


def test_reindex_command_can_name_one_conversation(redis_server: RedisServer,
                                                   redis_client: redis.Redis,
                                                   tmp_path: Path) -> None:
    for cid in ("one", "other"):
        _plant_legacy_index(redis_client, cid, [make_message(1, "user", FACT)])
        redis_client.sadd(keys.conversations(), cid)
    done = _reindex(redis_server, tmp_path, "--conversation", "one")
    assert done.returncode == 0, done.stderr
    assert "one: 1 messages indexed" in done.stdout and "other" not in done.stdout
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    assert store.check_index("one").ok and store.check_index("other").unindexed == 1


def test_reindex_embeddings_refuses_while_embeddings_are_off(redis_server: RedisServer,
                                                             redis_client: redis.Redis,
                                                             tmp_path: Path) -> None:
    # No key and MYSISTERDB_EMBEDDINGS unset (auto): the simulator's toy embeddings stay off.
    redis_client.sadd(keys.conversations(), "one")
    done = _reindex(redis_server, tmp_path, "--embeddings")
    assert done.returncode == 1
    assert "embeddings are off (MYSISTERDB_EMBEDDINGS=auto, simulator)" in done.stderr
    assert redis_client.llen("summary") == 0  # nothing queued
