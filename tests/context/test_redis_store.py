from __future__ import annotations

import redis

from context.builder import build_context
from context.redis_store import RedisHistoryStore, pack_seq
from context.terms import terms
from context.types import Summary
from mysisterdb import keys
from tests.context.chatgen import ChatGenerator, make_message

QUERY = "枡元さんの誕生日いつだっけ？"
FACT = "枡元さんの誕生日は3月12日だよ"


def _keys(client: redis.Redis, cid: str) -> set[bytes]:
    return set(client.scan_iter(match=keys.conv_prefix(cid) + "*"))


def test_append_and_read_back_in_seq_order(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client)
    for seq in (5, 1, 3, 2, 4):
        store.append("c", make_message(seq, "user" if seq % 2 else "assistant", f"第{seq}話"))
    assert [m.seq for m in store.last("c", limit=3)] == [3, 4, 5]
    assert [m.seq for m in store.before("c", before_seq=4, limit=2)] == [2, 3]
    assert [m.seq for m in store.between("c", after_seq=1, before_seq=5, limit=2)] == [2, 3]
    assert store.last("c", limit=1)[0] == make_message(5, "user", "第5話")
    assert store.last("other", limit=5) == []


def test_appending_the_same_seq_twice_stores_and_indexes_once(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client)
    store.append("c", make_message(1, "user", FACT))
    store.append("c", make_message(1, "user", FACT))
    assert redis_client.zcard(keys.conv_messages("c")) == 1
    assert store.check_index("c").ok


def test_fact_among_5000_turns_is_recalled(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client)
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
    store = RedisHistoryStore(redis_client)
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
    store = RedisHistoryStore(redis_client)
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
    store = RedisHistoryStore(redis_client)
    store.append_many("c", ChatGenerator().messages(40))
    store.append("c", make_message(41, "user", FACT))
    assert store.check_index("c").ok
    # A message removed behind the library's back leaves its postings dangling.
    redis_client.zremrangebyscore(keys.conv_messages("c"), 41, 41)
    first_term = terms(store.last("c", limit=41)[0].text)[0]
    redis_client.append(keys.conv_context("c", "p:" + first_term), pack_seq(1))
    report = store.check_index("c")
    assert report.dangling == len(terms(FACT)) and ("枡元", 41) in report.dangling_examples
    assert report.duplicates == 1 and not report.ok
    assert store.rebuild_index("c") == 40
    assert store.check_index("c").ok
    assert store.search("c", query=QUERY, before_seq=10**9, limit=3, threshold=0.4) == []


def test_rebuilt_index_answers_like_the_incremental_one(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client)
    store.append_many("c", ChatGenerator(seed=5).messages(300))
    store.append("c", make_message(301, "user", FACT))

    def answer() -> list[tuple[int, float]]:
        hits = store.search("c", query=QUERY, before_seq=10**9, limit=10, threshold=0.2)
        return [(h.message.seq, round(h.score, 9)) for h in hits]

    before = answer()
    store.rebuild_index("c")
    assert answer() == before and before[0][0] == 301
