"""Writing a conversation whole or not at all, reading it back, branching: on a real
redis-server (core/transfer_store.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pytest
import redis

from context.redis_store import RedisHistoryStore
from context.types import Message
from core import keys
from core.errors import Conflict, InvalidInput, NotFound
from core.history import history_store
from core.lifecycle import Lifecycle, Limits
from core.transfer import Said, Transcript, TurnRecord, counted
from core.transfer_store import BATCH, TooSlow, TransferStore, alternatives_json

LIMITS = Limits(hard_limit_s=60, queue_timeout_s=600)


class Broker:
    def __init__(self) -> None:
        self.summaries: list[tuple[str, str]] = []

    def publish_chat(self, job_id: str) -> None:
        pass

    def stop_chat(self, job_id: str) -> None:
        pass

    def request_summary(self, conversation_id: str, *, token: str) -> None:
        self.summaries.append((conversation_id, token))

    def request_embedding(self, conversation_id: str, *, token: str = "",
                          after_seq: int | None = None) -> None:
        pass


class BrokenHistory(RedisHistoryStore):
    """Stores the first batch, then Redis goes away."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches = 0

    def append_many(self, conversation_id: str, messages: Iterable[Message]) -> None:
        self.batches += 1
        if self.batches > 1:
            raise redis.ConnectionError("redis went away")
        super().append_many(conversation_id, messages)


def turn(i: int, *replies: str, chosen: int = 0) -> TurnRecord:
    said = [counted(Said(text=r, created_at="2025-01-01T00:00:00.000Z")) for r in replies]
    return TurnRecord(user=counted(Said(text=f"質問{i} 猫のミケ", created_at="2025-01-01T00:00:00.000Z")),
                      replies=tuple(said), chosen=chosen if said else None)


def transcript(n: int) -> Transcript:
    return Transcript(turns=tuple(turn(i, f"答え{i}") for i in range(1, n + 1)))


def store(client: redis.Redis, *, history: RedisHistoryStore | None = None,
          broker: Broker | None = None) -> TransferStore:
    return TransferStore(client=client, history=history or history_store(client),
                         broker=broker or Broker())


def test_create_reads_back_with_alternatives_indexed_and_listed(redis_client: redis.Redis) -> None:
    broker = Broker()
    written = Transcript(turns=(turn(1, "タマ", "ミケ", chosen=1), turn(2, "はい"), turn(3)))
    store(redis_client, broker=broker).create("new", owner="alice", transcript=written)
    assert store(redis_client).transcript("new") == written
    assert redis_client.get(keys.conv_owner("new")) == b"alice"
    assert redis_client.get(keys.conv_turn("new")) == b"3"
    assert redis_client.zscore(keys.person_conversations("alice"), "new") is not None
    assert redis_client.sismember(keys.conversations(), "new")
    hits = history_store(redis_client).search("new", query="ミケ", before_seq=100, limit=5,
                                              threshold=0.0)
    assert {h.message.seq for h in hits} >= {2}  # the chosen reply is in the index
    assert broker.summaries == [("new", "")]
    assert redis_client.zcard(keys.transfer_staging()) == 0
    assert not redis_client.keys(keys.conv_prefix("~*") + "*")
    # The next submit continues after the imported turns.
    lc = Lifecycle(client=redis_client, history=history_store(redis_client), limits=LIMITS,
                   broker=None)
    assert lc.submit(conversation_id="new", text="続き", tokens=1, owner="alice").job.turn == 4


def test_a_failure_mid_way_leaves_nothing(redis_client: redis.Redis) -> None:
    broken = store(redis_client, history=BrokenHistory(redis_client, key_of=keys.conv_key))
    with pytest.raises(redis.ConnectionError):
        broken.create("half", owner="alice", transcript=transcript(BATCH))  # 2 batches
    assert redis_client.keys("*") == []


def test_past_the_deadline_nothing_appears(redis_client: redis.Redis) -> None:
    with pytest.raises(TooSlow):
        store(redis_client).create("slow", owner="alice", transcript=transcript(3),
                                   deadline=time.monotonic() - 1)
    assert redis_client.keys("*") == []


def test_a_taken_id_is_a_conflict_and_stays_as_it_was(redis_client: redis.Redis) -> None:
    s = store(redis_client)
    s.create("taken", owner="alice", transcript=transcript(2))
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    with pytest.raises(Conflict):
        s.create("taken", owner="bob", transcript=transcript(5))
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before


def test_a_crashed_import_is_cleaned_by_the_next(redis_client: redis.Redis) -> None:
    left = "~staging-dead"
    history_store(redis_client).append_many(left, [Message(seq=1, role="user", text="残骸",
                                                           tokens=1, created_at="x")])
    redis_client.zadd(keys.transfer_staging(), {left: time.time() - keys.transfer_staging_stale_s - 1})
    store(redis_client).create("fresh", owner="alice", transcript=transcript(1))
    assert not redis_client.keys(keys.conv_prefix(left) + "*")
    assert redis_client.zcard(keys.transfer_staging()) == 0


def test_branch_copies_turns_up_to_n_and_leaves_the_original(redis_client: redis.Redis) -> None:
    s = store(redis_client)
    s.create("orig", owner="alice", transcript=Transcript(turns=(
        turn(1, "a"), turn(2, "b1", "b2", chosen=0), turn(3), turn(4, "d"), turn(5, "e"))))
    before = {k: redis_client.dump(k) for k in redis_client.keys(keys.conv_prefix("orig") + "*")}
    assert s.branch("orig", person="alice", turn=4, new_id="br") == 4
    branch = s.transcript("br")
    assert branch.turns == s.transcript("orig").turns[:4]
    assert redis_client.hget(keys.conv_alternatives("br"), "2") == alternatives_json(
        branch.turns[1]).encode()
    assert {k: redis_client.dump(k)
            for k in redis_client.keys(keys.conv_prefix("orig") + "*")} == before
    with pytest.raises(InvalidInput, match="返事がありません"):
        s.branch("orig", person="alice", turn=3, new_id="br2")
    with pytest.raises(InvalidInput, match="1〜5"):
        s.branch("orig", person="alice", turn=6, new_id="br2")
    with pytest.raises(NotFound):
        s.branch("orig", person="bob", turn=1, new_id="br2")
    with pytest.raises(Conflict):
        s.branch("orig", person="alice", turn=1, new_id="br")


def test_branch_waits_for_a_running_turn(redis_client: redis.Redis) -> None:
    lc = Lifecycle(client=redis_client, history=history_store(redis_client), limits=LIMITS,
                   broker=None)
    s = store(redis_client)
    s.create("live", owner="alice", transcript=transcript(2))
    lc.submit(conversation_id="live", text="走ってる", tokens=1, owner="alice")  # turn 3
    assert s.branch("live", person="alice", turn=2, new_id="before-it") == 2
    with pytest.raises(Conflict, match="途中"):
        s.branch("live", person="alice", turn=3, new_id="with-it")
