"""check on a conversation's messages: found, repaired when safe, never a message lost."""

from __future__ import annotations

import json

import redis

from context.types import Message
from core import keys
from core.history import history_store
from core.models import JobStatus, iso, utcnow
from mysisterdb.check import Kind
from tests.mysisterdb.check.plant import (
    LONG_AGO,
    check,
    conversation,
    kinds,
    message,
    problems,
    reply_text,
    store_turn,
    stored,
    texts,
    user_text,
)


def test_gap_is_left_alone_while_the_conversation_is_in_use(redis_client: redis.Redis) -> None:
    conversation(redis_client, "busy", 3)
    store_turn(redis_client, "busy", 4, reply=False, status=JobStatus.QUEUED, at=utcnow())
    redis_client.zremrangebyscore(keys.conv_messages("busy"), 3, 4)
    store_turn(redis_client, "recent", 1, at=utcnow())
    store_turn(redis_client, "recent", 3, at=utcnow())  # turn 2 never stored
    before = {cid: stored(redis_client, cid) for cid in ("busy", "recent")}

    gaps = [f for f in problems(redis_client, repair=True) if f.kind == Kind.GAP]
    assert [(f.conversation_id, f.repaired) for f in gaps] == [("busy", False), ("recent", False)]
    assert "is queued or running" in gaps[0].detail
    assert "last activity" in gaps[1].detail
    assert {cid: stored(redis_client, cid) for cid in ("busy", "recent")} == before
    assert check(redis_client, repair=True)[0] == 1


def test_reply_without_its_user_message_is_reported_never_dropped(
    redis_client: redis.Redis,
) -> None:
    conversation(redis_client, "a", 3)
    redis_client.zremrangebyscore(keys.conv_messages("a"), 3, 3)
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.repaired) for f in found] == [(Kind.ORPHAN_REPLY, False),
                                                     (Kind.INDEX, True)]
    assert reply_text("a", 2) in texts(redis_client, "a")
    assert check(redis_client)[0] == 1


def test_exact_copy_at_a_duplicate_seq_is_dropped(redis_client: redis.Redis) -> None:
    jobs = conversation(redis_client, "a", 3)
    copy = message(3, "user", user_text("a", 2), None, utcnow())  # same text, other bytes
    redis_client.zadd(keys.conv_messages("a"), {copy.to_json(): 3})

    found = problems(redis_client)
    assert kinds(found) == [Kind.DUPLICATE_SEQ] and "seq 3 has 2 members" in found[0].detail
    assert check(redis_client, repair=True)[0] == 0
    members = [raw for seq, raw in stored(redis_client, "a") if seq == 3]
    assert [Message.from_json(raw).job_id for raw in members] == [jobs[1].id]
    assert problems(redis_client) == []


def test_different_messages_at_one_seq_are_both_kept(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 2)
    other = message(3, "user", "別の話", None, LONG_AGO)
    redis_client.zadd(keys.conv_messages("a"), {other.to_json(): 3})
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.repaired) for f in found] == [(Kind.DUPLICATE_SEQ, False)]
    assert "別の話" in texts(redis_client, "a") and user_text("a", 2) in texts(redis_client, "a")
    assert check(redis_client, repair=True)[0] == 1


def test_unreadable_members_are_reported_and_never_deleted(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 2)
    no_tokens = json.dumps({"seq": 5, "role": "user", "text": "トークン数なし",
                            "created_at": iso(LONG_AGO)}, ensure_ascii=False)
    redis_client.zadd(keys.conv_messages("a"), {b"{not json": 7})
    redis_client.zadd(keys.conv_messages("a"), {no_tokens: 5})
    redis_client.set(keys.conv_turn("a"), 4)

    for repair in (False, True, True):
        found = problems(redis_client, repair=repair)
        assert [(f.kind, f.repaired) for f in found] == [(Kind.UNREADABLE, False)] * 2
    assert "no valid token count" in found[0].detail and "not JSON" in found[1].detail
    members = [raw for _, raw in stored(redis_client, "a")]
    assert b"{not json" in members and no_tokens.encode() in members
    assert check(redis_client, repair=True)[0] == 1


def test_turn_counter_behind_is_raised(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 3)
    redis_client.set(keys.conv_turn("a"), 1)
    found = problems(redis_client, repair=True)
    assert [(f.kind, f.repaired) for f in found] == [(Kind.TURN_BEHIND, True)]
    assert int(redis_client.get(keys.conv_turn("a")) or 0) == 3
    assert problems(redis_client) == []


def test_dangling_index_entry_is_rebuilt(redis_client: redis.Redis) -> None:
    conversation(redis_client, "a", 3)
    reply = [raw for seq, raw in stored(redis_client, "a") if seq == 4][0]
    redis_client.zrem(keys.conv_messages("a"), reply)  # a missing reply is no gap

    found = problems(redis_client)
    assert kinds(found) == [Kind.INDEX] and "dangling postings" in found[0].detail
    assert check(redis_client, repair=True)[0] == 0
    assert history_store(redis_client).check_index("a").ok
    assert problems(redis_client) == []
