"""check closing gaps: renumbering an idle conversation without losing a message."""

from __future__ import annotations

import pytest
import redis

from context.types import Message, Summary
from core import keys
from core.history import history_store
from core.jobs import JobStore
from mysisterdb.check import Kind, Renumber
from tests.mysisterdb.check.plant import (
    check,
    conversation,
    kinds,
    problems,
    stored,
    texts,
    user_text,
)


def test_gap_is_closed_by_renumbering_without_losing_a_message(redis_client: redis.Redis) -> None:
    jobs = conversation(redis_client, "a", 5)
    history = history_store(redis_client)
    history.set_summary("a", Summary(text="要約", covers_up_to_seq=8, tokens=2))
    redis_client.zremrangebyscore(keys.conv_messages("a"), 5, 6)  # turn 3 is gone
    kept = texts(redis_client, "a")

    found = problems(redis_client)
    assert kinds(found) == [Kind.GAP, Kind.INDEX]  # the index still points at seqs 5 and 6
    assert "missing turn(s) 3 " in found[0].detail
    assert stored(redis_client, "a")[4][0] == 7  # looking changed nothing

    code, out = check(redis_client, repair=True)
    assert code == 0, out
    assert texts(redis_client, "a") == kept
    assert [seq for seq, _ in stored(redis_client, "a")] == list(range(1, 9))
    moved = Message.from_json(stored(redis_client, "a")[4][1])
    assert (moved.seq, moved.text, moved.job_id) == (5, user_text("a", 4), jobs[3].id)
    assert JobStore(redis_client).job_id_for_turn("a", 3) == jobs[3].id
    assert JobStore(redis_client).job_id_for_turn("a", 4) == jobs[4].id
    assert JobStore(redis_client).job_id_for_turn("a", 5) is None
    assert JobStore(redis_client).get(jobs[4].id).turn == 4
    assert int(redis_client.get(keys.conv_turn("a")) or 0) == 4
    summary = history.get_summary("a")
    assert summary is not None and summary.covers_up_to_seq == 6  # still ends after old turn 4
    hits = history.search("a", query=user_text("a", 5), before_seq=100, limit=1, threshold=0.1)
    assert hits and hits[0].message.seq == 7 and hits[0].message.text == user_text("a", 5)
    assert check(redis_client)[0] == 0 and problems(redis_client) == []


@pytest.mark.parametrize(("seq", "expected"), [(1, 1), (4, 4), (5, 4), (6, 4), (7, 5),
                                               (10, 6), (13, 9), (20, 16)])
def test_renumber_maps_seqs_of_kept_and_vanished_turns(seq: int, expected: int) -> None:
    plan = Renumber.closing([1, 2, 4, 6])  # turns 3 and 5 vanished
    assert plan.seq(seq) == expected
    assert (plan.shift, plan.turn(3), plan.turn(6), plan.turn(9)) == (2, None, 4, 7)
