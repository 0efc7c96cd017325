from __future__ import annotations

import json
import threading

import pytest
import redis

from context.builder import build_context
from context.redis_store import RedisHistoryStore, StoreKeys, pack_seq, with_seq
from context.terms import terms
from context.types import Message, Summary
from core import keys
from tests.context.chatgen import ChatGenerator, make_message

QUERY = "枡元さんの誕生日いつだっけ？"
FACT = "枡元さんの誕生日は3月12日だよ"


def _keys(client: redis.Redis, cid: str) -> set[bytes]:
    return set(client.scan_iter(match=keys.conv_prefix(cid) + "*"))


def test_append_and_read_back_in_seq_order(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    for seq in (5, 1, 3, 2, 4):
        store.append("c", make_message(seq, "user" if seq % 2 else "assistant", f"第{seq}話"))
    assert [m.seq for m in store.last("c", limit=3)] == [3, 4, 5]
    assert [m.seq for m in store.before("c", before_seq=4, limit=2)] == [2, 3]
    assert [m.seq for m in store.between("c", after_seq=1, before_seq=5, limit=2)] == [2, 3]
    assert store.last("c", limit=1)[0] == make_message(5, "user", "第5話")
    assert store.last("other", limit=5) == []


def test_appending_the_same_seq_twice_stores_and_indexes_once(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append("c", make_message(1, "user", FACT))
    store.append("c", make_message(1, "user", FACT))
    assert redis_client.zcard(keys.conv_messages("c")) == 1
    assert store.check_index("c").ok


def test_fact_among_5000_turns_is_recalled(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    generator = ChatGenerator(seed=11)
    store.append_many("c", generator.messages(2500, first_seq=1))
    store.append("c", make_message(2501, "user", FACT))
    store.append("c", make_message(2502, "assistant", "覚えたよ！"))
    store.append_many("c", generator.messages(2998, first_seq=2503))
    assert redis_client.zcard(keys.conv_messages("c")) == 5500
    hits = store.search("c", query=QUERY, before_seq=10**9, limit=3, threshold=0.4)
    assert hits[0].message.text == FACT
    built = build_context(store=store, conversation_id="c", persona="あなたは妹です。",
                          new_message=make_message(5501, "user", QUERY))
    assert FACT in built.system_instruction
    assert built.total_tokens <= 4000 and built.contents[-1].text == QUERY


def test_reset_removes_messages_index_and_summary_only_of_that_conversation(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", ChatGenerator().messages(50))
    store.append_many("keep", ChatGenerator().messages(4))
    store.set_summary("c", Summary(text="要約", covers_up_to_seq=10, tokens=2))
    redis_client.set(keys.conv_turn("c"), 50)  # not ours: reset must leave it
    assert len(_keys(redis_client, "c")) > 10
    store.reset("c")
    assert _keys(redis_client, "c") == {keys.conv_turn("c").encode()}
    assert store.get_summary("c") is None and store.last("c", limit=5) == []
    assert len(store.last("keep", limit=10)) == 4


def test_summary_round_trip_and_monotonic(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    assert store.get_summary("c") is None
    # A conversation without messages (deleted while its summary was written) gets none.
    assert not store.set_summary("c", Summary(text="消えた会話", covers_up_to_seq=8, tokens=3))
    store.append_many("c", ChatGenerator().messages(8))
    assert store.set_summary("c", Summary(text="お兄ちゃんは猫が好き", covers_up_to_seq=8,
                                          tokens=9))
    assert not store.set_summary("c", Summary(text="古い", covers_up_to_seq=8, tokens=1))
    assert store.get_summary("c") == Summary(text="お兄ちゃんは猫が好き", covers_up_to_seq=8,
                                             tokens=9)


def test_check_finds_dangling_entries_and_rebuild_repairs_them(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", ChatGenerator().messages(40))
    store.append("c", make_message(41, "user", FACT))
    assert store.check_index("c").ok
    # A message removed behind the library's back leaves its postings dangling.
    redis_client.zremrangebyscore(keys.conv_messages("c"), 41, 41)
    first_term = terms(store.last("c", limit=41)[0].text)[0]
    redis_client.append(keys.conv_context("c", "1:p:" + first_term), pack_seq(1))
    report = store.check_index("c")
    assert report.dangling == len(terms(FACT)) and ("枡元", 41) in report.dangling_examples
    assert report.duplicates == 1 and not report.ok
    assert store.rebuild_index("c") == 40
    assert store.check_index("c").ok
    assert store.search("c", query=QUERY, before_seq=10**9, limit=3, threshold=0.4) == []


def test_rebuilt_index_answers_like_the_incremental_one(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", ChatGenerator(seed=5).messages(300))
    store.append("c", make_message(301, "user", FACT))

    def answer() -> list[tuple[int, float]]:
        hits = store.search("c", query=QUERY, before_seq=10**9, limit=10, threshold=0.2)
        return [(h.message.seq, round(h.score, 9)) for h in hits]

    before = answer()
    store.rebuild_index("c")
    assert answer() == before and before[0][0] == 301


def _plant_legacy_index(client: redis.Redis, cid: str, messages: list[Message]) -> None:
    """Messages stored and indexed the way the store did before index slots: bigram terms
    under ctx:p:{term} and ctx:vocab, none in the slots."""
    for message in messages:
        client.zadd(keys.conv_messages(cid), {message.to_json(): message.seq})
        grams = {message.text[i:i + 2] for i in range(len(message.text) - 1)}
        for gram in grams:
            client.append(keys.conv_context(cid, "p:" + gram), pack_seq(message.seq))
        client.sadd(keys.conv_context(cid, "vocab"), *grams)


def test_reindex_replaces_an_old_index_and_drops_its_keys(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    history = [*ChatGenerator(seed=3).messages(200), make_message(201, "user", FACT)]
    _plant_legacy_index(redis_client, "c", history)
    assert store.search("c", query=QUERY, before_seq=10**9, limit=3, threshold=0.4) == []
    assert store.check_index("c").unindexed == 201
    assert store.rebuild_index("c", batch=64) == 201
    assert store.check_index("c").ok
    assert store.search("c", query=QUERY, before_seq=10**9, limit=3, threshold=0.4)[0].message.seq == 201
    assert not redis_client.exists(keys.conv_context("c", "vocab"))
    assert not list(redis_client.scan_iter(match=keys.conv_context("c", "p:*")))
    # A second re-index moves to the other slot and deletes the first.
    first_slot = store.live_slot("c")
    assert store.rebuild_index("c") == 201 and store.live_slot("c") != first_slot
    assert not list(redis_client.scan_iter(match=keys.conv_context("c", f"{first_slot}:*")))
    assert store.check_index("c").ok


def test_appends_during_a_reindex_are_indexed_once_and_searchable(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", ChatGenerator(seed=4).messages(3000))
    appended: list[int] = []

    def chat_goes_on() -> None:
        # redis-py clients are thread-safe: each command takes a connection of the pool.
        live = RedisHistoryStore(redis_client, key_of=keys.conv_key)
        for seq in range(3001, 3061):
            live.append("c", make_message(seq, "user", f"シーラルカ館の{seq}番の話"))
            appended.append(seq)
            # Searches keep answering from the live index meanwhile.
            live.search("c", query="シーラルカ館", before_seq=10**9, limit=3, threshold=0.4)

    worker = threading.Thread(target=chat_goes_on)
    worker.start()
    store.rebuild_index("c", batch=100, pause_s=0.005)
    worker.join()
    assert len(appended) == 60
    report = store.check_index("c")
    assert report.ok and report.messages == 3060, report
    hits = store.search("c", query="シーラルカ館の話", before_seq=10**9, limit=100, threshold=0.4)
    assert {h.message.seq for h in hits} == set(appended)


class _CrashingStore(RedisHistoryStore):
    batches = 0

    def _index_batch(self, k: StoreKeys, slot: str, messages: list[Message]) -> int:
        self.batches += 1
        if self.batches == 3:
            raise ConnectionError("killed half way")
        return super()._index_batch(k, slot, messages)


class _BusyStore(RedisHistoryStore):
    """While each batch is indexed, the chat appends a message (after the batch was read)."""

    next_seq = 0

    def _index_batch(self, k: StoreKeys, slot: str, messages: list[Message]) -> int:
        self.next_seq += 1
        self.append(k.cid, make_message(self.next_seq, "user", f"シーラルカ館の{self.next_seq}番"))
        return super()._index_batch(k, slot, messages)


def test_a_message_appended_after_the_last_batch_was_read_is_in_the_new_index(
    redis_client: redis.Redis,
) -> None:
    store = _BusyStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", ChatGenerator(seed=8).messages(250))
    store.next_seq = 250
    store.rebuild_index("c", batch=100)  # 3 batches: messages 251..253 appended meanwhile
    assert store.next_seq == 253
    report = store.check_index("c")
    assert report.ok and report.messages == 253, report
    hits = store.search("c", query="シーラルカ館", before_seq=10**9, limit=10, threshold=0.4)
    assert {h.message.seq for h in hits} == {251, 252, 253}


def test_an_interrupted_reindex_is_resumed_without_double_postings(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", ChatGenerator(seed=6).messages(500))
    live_before = store.live_slot("c")
    crashing = _CrashingStore(redis_client, key_of=keys.conv_key)
    with pytest.raises(ConnectionError):
        crashing.rebuild_index("c", batch=100)
    # Half built: searches still read the old slot, appends go to both.
    assert store.live_slot("c") == live_before
    store.append("c", make_message(501, "user", FACT))
    assert store.search("c", query=QUERY, before_seq=10**9, limit=1, threshold=0.4)
    assert store.rebuild_index("c", batch=100) == 500 - 200  # the rest only
    assert store.live_slot("c") != live_before
    report = store.check_index("c")
    assert report.ok and report.messages == 501, report
    assert store.search("c", query=QUERY, before_seq=10**9, limit=1, threshold=0.4)[0].message.seq == 501


def test_the_store_uses_the_key_layout_it_is_given(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=lambda cid, name: f"elsewhere/{cid}/{name}")
    store.append("c", make_message(1, "user", FACT))
    store.set_summary("c", Summary(text="要約", covers_up_to_seq=1, tokens=2))
    names = {k.decode() for k in redis_client.scan_iter()}
    assert names and all(n.startswith("elsewhere/c/") for n in names)
    assert "elsewhere/c/messages" in names and "elsewhere/c/summary" in names
    assert store.search("c", query=QUERY, before_seq=2, limit=1, threshold=0.4)
    store.reset("c")
    assert list(redis_client.scan_iter()) == []


def test_the_application_layout_matches_its_key_functions() -> None:
    assert keys.conv_key("x", "messages") == keys.conv_messages("x")
    assert keys.conv_key("x", "summary") == keys.conv_summary("x")
    assert keys.conv_key("x", "ctx:1:vocab") == keys.conv_context("x", "1:vocab")


# -- members as stored, copies, renumbering (what `mysisterdb check` repairs through) -------


def _members(client: redis.Redis, cid: str) -> list[tuple[bytes, float]]:
    return list(client.zrange(keys.conv_messages(cid), 0, -1, withscores=True))


def test_raw_members_gives_every_member_as_stored_in_batches(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append_many("c", [make_message(s, "user" if s % 2 else "assistant", f"第{s}話")
                            for s in range(1, 6)])
    redis_client.zadd(keys.conv_messages("c"), {b"{not json": 6})
    expected = _members(redis_client, "c")
    assert len(expected) == 6
    assert list(store.raw_members("c", batch=2)) == expected
    assert list(store.raw_members("c", batch=6)) == expected
    with redis_client.pipeline() as pipe:
        pipe.watch(*store.watched_keys("c"))
        assert list(store.raw_members("c", client=pipe, batch=4)) == expected
    assert list(store.raw_members("none")) == []


def test_summary_seq_is_the_coverage_or_none(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    assert store.summary_seq("c") is None
    store.append("c", Message(seq=1, role="user", text="こんにちは", tokens=3, created_at="t"))
    store.set_summary("c", Summary(text="要約", covers_up_to_seq=8, tokens=2))
    assert store.summary_seq("c") == 8
    with redis_client.pipeline() as pipe:
        pipe.watch(*store.watched_keys("c"))
        assert store.summary_seq("c", client=pipe) == 8


def test_drop_copies_removes_copies_only_beside_the_kept_member(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    kept = make_message(3, "user", FACT)
    store.append("c", kept)
    copy = Message(seq=3, role="user", text=FACT, tokens=kept.tokens, created_at="2027",
                   job_id="other").to_json().encode()
    elsewhere = Message(seq=3, role="user", text=FACT, tokens=1, created_at="x",
                        job_id=None).to_json().encode()
    redis_client.zadd(keys.conv_messages("c"), {copy: 3, elsewhere: 5})
    keep = kept.to_json().encode()
    with pytest.raises(ValueError):
        store.drop_copies("c", keep=keep, copies=[make_message(3, "user", "別").to_json().encode()])
    assert len(_members(redis_client, "c")) == 3
    assert store.drop_copies("c", keep=keep, copies=[copy, elsewhere, keep]) == 1
    assert _members(redis_client, "c") == [(keep, 3.0), (elsewhere, 5.0)]


def test_drop_copies_keeps_every_copy_when_the_kept_member_is_gone(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    kept, copy = make_message(1, "user", FACT), make_message(1, "user", FACT, tokens=1)
    redis_client.zadd(keys.conv_messages("c"), {copy.to_json(): 1})
    assert store.drop_copies("c", keep=kept.to_json().encode(),
                             copies=[copy.to_json().encode()]) == 0
    assert len(_members(redis_client, "c")) == 1


def test_renumber_moves_members_with_every_field_and_the_summary_in_one_multi(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append("c", make_message(1, "user", "こんにちは"))
    store.append("c", make_message(5, "user", FACT))
    store.append("c", make_message(6, "assistant", "覚えたよ"))
    store.set_summary("c", Summary(text="要約", covers_up_to_seq=6, tokens=2))
    # A field this version does not know (written by a newer one) must survive the move.
    extra = json.loads(_members(redis_client, "c")[1][0]) | {"later_field": [1, "二"]}
    redis_client.zremrangebyscore(keys.conv_messages("c"), 5, 5)
    redis_client.zadd(keys.conv_messages("c"), {json.dumps(extra, ensure_ascii=False): 5})
    old = {int(score): json.loads(raw) for raw, score in _members(redis_client, "c")}
    with redis_client.pipeline() as pipe:
        pipe.watch(*store.watched_keys("c"))
        moves = [(raw, int(score) - 2) for raw, score in store.raw_members("c", client=pipe)
                 if score > 1]
        pipe.multi()
        store.renumber("c", moves, pipe=pipe, covers_up_to_seq=4)
        assert [m.seq for m in store.last("c", limit=5)] == [1, 5, 6]  # queued, not applied
        pipe.execute()
    new = {int(score): json.loads(raw) for raw, score in _members(redis_client, "c")}
    assert sorted(new) == [1, 3, 4]
    assert new[1] == old[1]
    for before, after in ((5, 3), (6, 4)):
        assert new[after] == old[before] | {"seq": after}
    assert new[3]["later_field"] == [1, "二"]
    assert store.get_summary("c") == Summary(text="要約", covers_up_to_seq=4, tokens=2)
    store.rebuild_index("c")
    assert store.check_index("c").ok
    hits = store.search("c", query=QUERY, before_seq=100, limit=1, threshold=0.1)
    assert hits and hits[0].message.seq == 3


@pytest.mark.parametrize("racing_write", ["message", "summary"])
def test_a_write_to_a_watched_key_aborts_a_renumber(
    redis_client: redis.Redis, racing_write: str,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append("c", make_message(3, "user", FACT))
    store.set_summary("c", Summary(text="要約", covers_up_to_seq=3, tokens=2))
    with redis_client.pipeline() as pipe:
        pipe.watch(*store.watched_keys("c"))
        moves = [(raw, 1) for raw, _ in store.raw_members("c", client=pipe)]
        if racing_write == "message":
            store.append("c", make_message(4, "assistant", "はーい"))
        else:
            store.set_summary("c", Summary(text="新しい", covers_up_to_seq=4, tokens=2))
        pipe.multi()
        store.renumber("c", moves, pipe=pipe, covers_up_to_seq=1)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert 3 in [m.seq for m in store.last("c", limit=5)]
    summary = store.get_summary("c")
    assert summary is not None and summary.covers_up_to_seq >= 3


def test_with_seq_changes_the_seq_alone() -> None:
    raw = '{"seq":5,"role":"user","text":"猫","tokens":1,"created_at":"t","job_id":"j","x":2}'
    assert json.loads(with_seq(raw.encode(), 3)) == json.loads(raw) | {"seq": 3}
    assert "猫" in with_seq(raw, 3)  # kept readable, as append stores it


def test_reads_given_a_client_go_through_it_alone(redis_client: redis.Redis) -> None:
    """What check reads under WATCH is read on the WATCHing connection, not the store's."""
    RedisHistoryStore(redis_client, key_of=keys.conv_key).append("c", make_message(1, "user", FACT))
    redis_client.hset(keys.conv_summary("c"), "covers_up_to_seq", 1)
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    store = RedisHistoryStore(unreachable, key_of=keys.conv_key)
    with redis_client.pipeline() as pipe:
        pipe.watch(*store.watched_keys("c"))
        assert list(store.raw_members("c", client=pipe)) == _members(redis_client, "c")
        assert store.summary_seq("c", client=pipe) == 1
    with pytest.raises(redis.ConnectionError):
        store.summary_seq("c")
