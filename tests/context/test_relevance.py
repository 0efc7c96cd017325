from __future__ import annotations

import pytest

from context.memory_store import InMemoryHistoryStore
from context.relevance import SearchConfig
from tests.context.chatgen import ChatGenerator, make_message

QUERY = "枡元さんの誕生日いつだっけ？"
FACT = "枡元さんの誕生日は3月12日だよ"


def _store_with_fact(filler: int, *, fact_at: int = 1) -> InMemoryHistoryStore:
    store = InMemoryHistoryStore()
    store.append("c", make_message(fact_at, "user", FACT))
    for message in ChatGenerator().messages(filler, first_seq=fact_at + 1):
        store.append("c", message)
    return store


def test_japanese_fact_is_found_among_filler() -> None:
    store = _store_with_fact(2000)
    hits = store.search("c", query=QUERY, before_seq=10**9, limit=5, threshold=0.4)
    assert hits and hits[0].message.text == FACT
    assert 0.4 <= hits[0].score <= 1.0


def test_scores_are_best_first_and_within_0_1() -> None:
    store = _store_with_fact(500)
    hits = store.search("c", query="田中さんの誕生日", before_seq=10**9, limit=20, threshold=0.0)
    assert len(hits) == 20
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    # Best first, except that a newer message on the same subject may be lifted above an
    # older, better-scored one (newer wins): every inversion is of that kind.
    for i, above in enumerate(hits):
        for below in hits[i + 1:]:
            assert above.score >= below.score or above.message.seq > below.message.seq


def test_threshold_filters_out_weak_matches() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "京都でラーメンを食べた"))
    store.append("c", make_message(2, "user", "京都に行きたい"))
    query = "京都のラーメン屋さん"
    loose = store.search("c", query=query, before_seq=100, limit=5, threshold=0.0)
    assert [h.message.seq for h in loose] == [1, 2]
    # 1 covers 京都 + ラーメン, every term of the query the history knows (屋 is in no
    # message, so it is not in the denominator); 2 only 京都, a common term.
    score_1, score_2 = (h.score for h in loose)
    assert score_2 < 0.4 and score_1 > 0.8
    default = store.search("c", query=query, before_seq=100, limit=5, threshold=0.4)
    assert [h.message.seq for h in default] == [1]
    assert store.search("c", query=query, before_seq=100, limit=5, threshold=0.99) == []
    # A copy of the message is its best match; not 1.0 here because it is longer than
    # the average message (BM25's length normalisation).
    exact = store.search("c", query="京都でラーメンを食べた", before_seq=100, limit=5,
                         threshold=0.9)
    assert [h.message.seq for h in exact] == [1]


def test_mixed_latin_and_japanese_query() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "GitHub Actionsの設定で詰まった"))
    store.append("c", make_message(2, "user", "今日は雨だった"))
    hits = store.search("c", query="github actions どうなった？", before_seq=100, limit=5,
                        threshold=0.4)
    assert [h.message.seq for h in hits] == [1]


def test_search_only_sees_messages_before_before_seq() -> None:
    store = _store_with_fact(10, fact_at=50)
    assert store.search("c", query=QUERY, before_seq=50, limit=5, threshold=0.4) == []
    assert store.search("c", query=QUERY, before_seq=51, limit=5, threshold=0.4)


def test_empty_history_and_empty_query() -> None:
    store = InMemoryHistoryStore()
    assert store.search("c", query=QUERY, before_seq=10, limit=5, threshold=0.4) == []
    store.append("c", make_message(1, "user", FACT))
    assert store.search("c", query="！？", before_seq=10, limit=5, threshold=0.0) == []


def test_capped_postings_still_find_a_rare_term() -> None:
    # Every filler mentions 誕生日; only the fact has the rare name.  With a tiny postings
    # cap the common terms are truncated, yet the rare term brings the fact back.
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", FACT))
    for seq in range(2, 600):
        store.append("c", make_message(seq, "user", f"佐藤さんの誕生日は{seq % 12 + 1}月だよ"))
    config = SearchConfig(postings_cap=16, max_candidates=8)
    hits = store.search("c", query=QUERY, before_seq=10**6, limit=1, threshold=0.4,
                        config=config)
    assert [h.message.seq for h in hits] == [1]


def _scores(store: InMemoryHistoryStore, query: str, before_seq: int = 10**6) -> dict[int, float]:
    hits = store.search("c", query=query, before_seq=before_seq, limit=50, threshold=0.0)
    return {h.message.seq: h.score for h in hits}


def test_query_terms_absent_from_the_history_are_not_in_the_denominator() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "I parked the car on level B3"))
    store.append("c", make_message(2, "user", "the weather was nice"))
    plain = _scores(store, "where did I park my car?")[1]
    # yesterday / evening / mall are in no stored message: they change nothing.
    padded = _scores(store, "where did I park my car yesterday evening at the mall?")[1]
    assert plain == padded and plain > 0.8
    # A word that IS in the history but not in the fact lowers the score.
    assert _scores(store, "where did I park my car, was the weather nice?")[1] < 0.7


def test_the_question_itself_stored_before_its_prompt_does_not_make_its_words_known() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "I parked the car on level B3"))
    store.append("c", make_message(2, "user", "the weather was nice"))
    before = _scores(store, "where did I park my car yesterday?", before_seq=3)[1]
    # The worker builds the prompt after the API stored the question (seq 3).
    store.append("c", make_message(3, "user", "where did I park my car yesterday?"))
    after = _scores(store, "where did I park my car yesterday?", before_seq=3)[1]
    assert after == pytest.approx(before, rel=1e-9) and before > 0.8


def test_bm25_prefers_rare_terms_and_discounts_long_messages() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "ひまりは五歳になった"))
    store.append("c", make_message(2, "user", "ゆいちゃんは六歳になった"))
    store.append("c", make_message(3, "user", "ひまりと公園に行った"))
    for seq in range(4, 30):
        store.append("c", make_message(seq, "user", f"{seq}歳の誕生日おめでとう"))
    scores = _scores(store, "ひまりって何歳？")
    # The name is rare, 歳 is everywhere: the name counts for more.
    assert scores[1] > scores[3] > scores[2]
    long_fact = "ひまりは五歳になった、" + "、".join(f"{w}が好き" for w in
                                               ("犬", "猫", "鳥", "魚", "花", "空", "海", "山"))
    store.append("c", make_message(40, "user", long_fact))
    assert _scores(store, "ひまりって何歳？")[40] < scores[1]


def test_a_newer_message_on_the_same_subject_ranks_above_the_older() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "銀行の暗証番号は4821にした"))
    for seq in range(2, 40):
        store.append("c", make_message(seq, "user", f"今日は{seq}時に起きた"))
    store.append("c", make_message(40, "user", "暗証番号、7356に変えたよ"))
    hits = store.search("c", query="銀行の暗証番号なんだっけ？", before_seq=100, limit=5,
                        threshold=0.1)
    scores = {h.message.seq: h.score for h in hits}
    assert scores[40] < scores[1]  # the old one has 銀行 too, so it scores higher
    assert [h.message.seq for h in hits][:2] == [40, 1]  # but the newer ranks first
    # A newer message on another subject is not lifted.
    store.append("c", make_message(41, "user", "銀行まで歩いた"))
    hits = store.search("c", query="銀行の暗証番号なんだっけ？", before_seq=100, limit=5,
                        threshold=0.1)
    assert [h.message.seq for h in hits][:2] == [40, 1]
