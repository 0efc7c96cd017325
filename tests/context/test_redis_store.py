from __future__ import annotations

import threading

import pytest
import redis

from context.builder import build_context
from context.redis_store import RedisHistoryStore, StoreKeys, pack_seq
from context.terms import terms
from context.types import Message, Summary
from mysisterdb import keys
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
