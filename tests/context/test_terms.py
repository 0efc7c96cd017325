from __future__ import annotations

import multiprocessing
import threading

from context.terms import (
    FALLBACK_WEIGHT,
    SHORT_UNIT_WEIGHT,
    WORD_WEIGHT,
    Analysis,
    _analyser,
    analyse,
    terms,
    warm_up,
)


def _shared(a: str, b: str) -> set[str]:
    return set(terms(a)) & set(terms(b))


def test_japanese_words_become_their_normalized_forms() -> None:
    # Inflections and spellings meet on one form: 食べた / 食べました / たべる -> 食べる.
    assert "食べる" in terms("昨日カレーを食べた")
    assert "食べる" in terms("カレー食べました")
    assert "食べる" in terms("一緒にたべる？")
    # Kanji numerals are numbers: 五歳 and 5歳 share 5 and 歳.
    assert {"5", "歳"} <= set(terms("五歳になった")) & set(terms("5歳になった"))


def test_particles_auxiliaries_pronouns_and_honorifics_are_dropped() -> None:
    found = terms("枡元さんの誕生日はいつだっけ？")
    assert "枡元" in found and "誕生日" in found
    for function_word in ("さん", "の", "は", "いつ", "だ", "っけ", "?"):
        assert function_word not in found


def test_nani_compounds_ask_for_their_counter() -> None:
    # 「何歳」 is one word to Sudachi; the question is about 歳, which 「五歳」 has.
    assert "歳" in _shared("ひまりって今何歳だっけ？", "姪のひまりは先月で五歳になったんだ")
    assert "時" in terms("モカのごはんって何時だっけ？")
    assert "何歳" not in terms("何歳？") and "何" not in terms("何歳？")


def test_compounds_also_give_their_short_units_at_half_weight() -> None:
    weights = analyse("誕生日").weights
    assert weights["誕生日"] == WORD_WEIGHT
    assert weights["誕生"] == SHORT_UNIT_WEIGHT and weights["日"] == SHORT_UNIT_WEIGHT
    assert "日" in _shared("誕生日いつ？", "生まれた日はね")


def test_hiragana_names_meet_through_bigrams_whatever_sudachi_makes_of_them() -> None:
    # Sudachi cuts ひまり as ひま+り in one sentence and ひ+まり in another.
    question, fact = "ひまりって今何歳だっけ？", "姪のひまりは先月で五歳になったんだ"
    assert {"ひま", "まり"} <= _shared(question, fact)
    # The particle before and after the name is not part of it (no の+ひ, り+は bigrams).
    assert "のひ" not in terms(fact) and "りは" not in terms(fact)
    # With an honorific Sudachi misreads as a verb (くん -> 来る), the name still comes out.
    assert {"はる", "ると"} <= set(terms("はるとくんは7歳"))
    assert {"ゆう", "うと"} <= _shared("ゆうとくんって何のクラブ？", "ゆうとくんはサッカークラブに入る")
    # A two-letter name is its own term.
    assert "めい" in terms("めいちゃんが来た")


def test_fallback_bigrams_for_unknown_words_and_katakana_share_half_a_word() -> None:
    weights = analyse("シーラルカ館に行った").weights
    assert weights["シーラルカ"] == WORD_WEIGHT  # Sudachi keeps the unknown word whole
    grams = ["シー", "ーラ", "ラル", "ルカ"]
    assert all(weights[g] == FALLBACK_WEIGHT / len(grams) for g in grams)
    # A katakana word written inside a longer one still shares bigrams with it.
    assert {"アイ", "イス"} <= _shared("アイスクリーム食べたい", "アイス買ってきて")
    # Fallback bigrams do not lengthen a message (BM25's length counts words only).
    assert analyse("シーラルカ館に行った").length == 3


def test_english_is_stemmed_without_stop_words() -> None:
    assert terms("where did I park my car?") == ["park", "car"]
    assert {"park", "car"} <= set(terms("I parked the car on level B3"))
    assert "land" in _shared("when does the flight land?", "her flight lands at 6:40")
    assert "b3" in terms("level B3") and "40" in terms("6:40")
    assert terms("the of and it") == []


def test_width_and_case_are_folded() -> None:
    assert terms("ＦａｓｔＡＰＩ") == terms("fastapi") == terms("FastAPI")
    assert terms("ｶﾀｶﾅのﾃｽﾄ") == terms("カタカナのテスト")
    assert terms("１２３") == ["123"]
    assert terms("GitHub") == terms("github")


def test_punctuation_only_and_empty_texts_have_no_terms() -> None:
    assert terms("！？。、") == [] and terms("") == []


def test_very_long_text_is_analysed_in_chunks() -> None:
    # Sudachi refuses one input over 49,149 bytes; 20,000 kana are 60,000.
    long_text = "あいうえおかきくけこ猫" * 2000
    assert "猫" in terms(long_text)


def test_encode_decode_round_trip() -> None:
    analysis = analyse("猫と猫と犬、cats and dogs")
    decoded = Analysis.decode(analysis.encode())
    assert decoded.counts == analysis.counts and decoded.length == analysis.length
    assert decoded.counts["猫"] == 2


def test_dictionary_is_loaded_once_per_process() -> None:
    warm_up()
    before = _analyser.cache_info()
    warm_up()
    terms("もう一度")
    after = _analyser.cache_info()
    assert after.misses == before.misses == 1 and after.hits > before.hits


def test_analysis_is_safe_from_several_threads() -> None:
    texts = [f"ひまりちゃんは{i}歳、I parked car {i}" for i in range(50)]
    expected = [terms(t) for t in texts]
    results: dict[int, list[list[str]]] = {}

    def work(n: int) -> None:
        results[n] = [terms(t) for t in texts]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[n] == expected for n in range(4))


def _analyse_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(terms("ひまりって今何歳だっけ？ where did I park my car?"))


def test_a_dictionary_loaded_before_fork_works_in_the_children() -> None:
    # What a prefork worker does when the parent warms the analyser up before forking.
    warm_up()
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    children = [fork.Process(target=_analyse_in_child, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    expected = terms("ひまりって今何歳だっけ？ where did I park my car?")
    assert results == [expected, expected] and "park" in expected and "歳" in expected
