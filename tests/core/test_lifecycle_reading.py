"""Deleting a conversation, idempotency keys, cancel before start, and reading conversations
back (the list, history pages), against a real redis-server in process."""



import pytest
import redis

from context.types import Message, Summary, reply_seq
from core import keys
from core.conversations import ConversationReader
from core.errors import IdempotencyKeyReused
from core.history import history_store
from core.lifecycle import JobGone, Outcome
from core.models import StepStatus, iso, utcnow
from tests.core.test_lifecycle import Broker, fail, make, reply, service, submit  # noqa: F401

# -- deleting a conversation --------------------------------------------------------------------


def conversation_keys(client: redis.Redis, cid: str) -> list[bytes]:
    return list(client.scan_iter(match=keys.conv_prefix(cid) + "*", count=1000))


def test_delete_cancels_live_jobs_and_leaves_nothing_a_late_worker_can_write_into(
        redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    running, queued = submit(lc, "猫の話"), submit(lc, "犬の話")
    submit(lc, "残す", cid="keep")
    lc.claim(running)
    lc.show_text(running, "途中")
    history = history_store(redis_client)
    assert history.set_summary("c", Summary(text="要約", covers_up_to_seq=1, tokens=1))
    deleted = lc.delete_conversation("c")
    assert deleted is not None and deleted.jobs == 2 and deleted.stopped == [running]
    assert conversation_keys(redis_client, "c") == []
    assert lc.jobs.find(running) is None and lc.jobs.find(queued) is None
    for index in (keys.active_jobs(), keys.running_jobs(), keys.outbox()):
        assert {running.encode(), queued.encode()}.isdisjoint(redis_client.zrange(index, 0, -1))
    assert not redis_client.sismember(keys.conversations(), "c")
    assert redis_client.zscore(keys.conversations_by_activity(), "c") is None
    # The worker that was running finds its job gone at its next write.
    with pytest.raises(JobGone):
        lc.show_text(running, "途中まで書いた")
    assert lc.end(running, Outcome.completed(reply_for(running, turn=1))) is None
    assert not history.set_summary("c", Summary(text="遅れた要約", covers_up_to_seq=2, tokens=1))
    assert conversation_keys(redis_client, "c") == []
    assert [m.text for m in history.last("keep", limit=5)] == ["残す"]
    assert lc.delete_conversation("c") is None


def reply_for(job_id: str, *, turn: int) -> Message:
    return Message(seq=reply_seq(turn), role="assistant", text="遅い返事", tokens=1,
                   created_at=iso(utcnow()) or "", job_id=job_id)


def test_a_conversation_deleted_and_started_again_begins_at_turn_one(
        redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    submit(lc, "一")
    submit(lc, "二")
    lc.delete_conversation("c")
    fresh = lc.jobs.get(submit(lc, "はじめまして"))
    assert fresh.turn == 1
    assert [m.text for m in history_store(redis_client).last("c", limit=5)] == ["はじめまして"]


# -- idempotency, cancel, activity ------------------------------------------------------------


def test_a_key_reused_with_another_body_is_refused(redis_client: redis.Redis) -> None:
    broker = Broker()
    chat = service(make(redis_client, broker))
    first = chat.submit(conversation_id="c", text="hi", idempotency_key="k4")
    with pytest.raises(IdempotencyKeyReused):
        chat.submit(conversation_id="c", text="別の話", idempotency_key="k4")
    with pytest.raises(IdempotencyKeyReused):
        chat.submit(conversation_id="d", text="hi", idempotency_key="k4")
    assert chat.submit(conversation_id="c", text="hi", idempotency_key="k4").job.id == first.job.id
    assert len(broker.sent) == 1


def test_a_job_cancelled_before_it_started_shows_the_step_it_waited_for(
        redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    cancelled = lc.cancel(submit(lc, "やめた"))
    assert cancelled.error is None
    assert [s.status for s in cancelled.steps] == [StepStatus.CANCELLED, StepStatus.SKIPPED,
                                                  StepStatus.SKIPPED, StepStatus.SKIPPED]


def test_conversations_are_listed_by_last_activity(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    older = submit(lc, "  古い会話の  最初のメッセージはとても長いので短くして見せます、ここまで", cid="a")
    submit(lc, "新しい会話", cid="b")
    reader = ConversationReader(client=redis_client, history=lc.history)
    assert [v.id for v in reader.newest(limit=10)] == ["b", "a"]
    lc.claim(older)
    lc.end(older, Outcome.completed(reply(lc, older)))
    views = reader.newest(limit=10)
    assert [(v.id, v.message_count, v.job_running) for v in views] == [("a", 2, False),
                                                                        ("b", 1, True)]
    assert views[0].title == "古い会話の 最初のメッセージはとても長いので短くして見せま…"
    assert len(views[0].title) == 30
    assert [v.id for v in reader.newest(limit=10, before=views[0].last_activity)] == ["b"]


def test_history_pages_whole_turns_both_ways_with_their_state(redis_client: redis.Redis) -> None:
    lc = make(redis_client, Broker())
    ids = [submit(lc, f"{i}番目") for i in range(1, 6)]
    lc.claim(ids[0])
    lc.end(ids[0], Outcome.completed(reply(lc, ids[0])))
    fail(lc, ids[1], text="途中")
    lc.claim(ids[2])
    lc.end(ids[2], Outcome.completed(reply(lc, ids[2])))
    lc.claim(ids[3])
    lc.show_text(ids[3], "書いてる")
    reader = ConversationReader(client=redis_client, history=lc.history)
    page = reader.turns("c", limit=10)
    assert [(t.turn, t.state) for t in page.turns] == [
        (1, "completed"), (2, "incomplete"), (3, "completed"), (4, "in_progress"), (5, "queued")]
    assert page.turns[1].job is not None and page.turns[1].job.partial_reply == "途中"
    assert page.turns[3].job is not None and page.turns[3].job.partial_reply == "書いてる"
    newest = reader.turns("c", limit=2)
    assert [t.turn for t in newest.turns] == [4, 5]
    assert newest.has_more_before and not newest.has_more_after
    back = reader.turns("c", limit=2, before=newest.turns[0].user.seq)
    assert [t.turn for t in back.turns] == [2, 3] and back.has_more_before
    on = reader.turns("c", limit=2, after=back.turns[-1].user.seq)
    assert [t.turn for t in on.turns] == [4, 5] and on.has_more_before and not on.has_more_after
    first = reader.turns("c", limit=1, after=0)
    assert [t.turn for t in first.turns] == [1] and not first.has_more_before
    assert first.has_more_after
