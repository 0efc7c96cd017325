from __future__ import annotations

from context.terms import term_weight, terms
from context.tokens import count_tokens, truncate_to_tokens
from context.types import Message
from tests.context.chatgen import make_message


def test_count_tokens_japanese_mixed_and_empty() -> None:
    assert count_tokens("") == 0
    assert count_tokens("枡元さんの誕生日は3月12日だよ") > 5
    assert count_tokens("Python と FastAPI") == count_tokens("Python と FastAPI")


def test_special_token_text_is_counted_as_plain_text() -> None:
    assert count_tokens("<|endoftext|>") > 1


def test_truncate_to_tokens_keeps_a_prefix_within_the_cap() -> None:
    text = "枡元さんの誕生日は3月12日だよ。" * 20
    cut = truncate_to_tokens(text, 10)
    assert text.startswith(cut)
    assert 0 < count_tokens(cut) <= 10
    assert truncate_to_tokens("短い", 100) == "短い"
    assert truncate_to_tokens("短い", 0) == ""


def test_japanese_terms_are_bigrams_cut_at_script_changes() -> None:
    assert terms("枡元さんの誕生日は3月12日だよ") == [
        "枡元", "さん", "んの", "誕生", "生日", "3", "月", "12", "日", "だよ"]
    # A lone kanji is its own term, so 猫が and 猫は share it; lone particles are dropped.
    assert "猫" in terms("猫が好き") and "猫" in terms("猫は？")
    assert "は" not in terms("猫は？")


def test_latin_terms_are_words_normalised() -> None:
    assert terms("Pythonで ＦａｓｔＡＰＩ を使う") == ["python", "fastapi", "使"]
    assert terms("ｶﾀｶﾅ") == ["カタ", "タカ", "カナ"]
    assert terms("！？。、") == []


def test_hiragana_terms_weigh_less() -> None:
    assert term_weight("いつ") < term_weight("誕生") == term_weight("python") == 1.0


def test_message_json_round_trip_keeps_japanese_readable() -> None:
    message = make_message(7, "assistant", "お兄ちゃん、おかえり！")
    raw = message.to_json()
    assert "お兄ちゃん" in raw and " " not in raw
    assert Message.from_json(raw.encode()) == message
