from __future__ import annotations

from context.tokens import count_tokens, truncate_to_tokens
from context.types import Message
from tests.context.chatgen import make_message


def test_count_tokens_japanese_mixed_and_empty() -> None:
    assert count_tokens("") == 0
    # cl100k_base ids, fixed by the encoding: "hello world" -> [15339, 1917].
    assert count_tokens("hello world") == 2
    assert count_tokens("Python と FastAPI") == 5  # Python, " ", と, " Fast", API
    assert count_tokens("枡元さんの誕生日は3月12日だよ") == 16  # rare kanji take 2+ tokens


def test_special_token_text_is_counted_as_plain_text() -> None:
    assert count_tokens("<|endoftext|>") > 1


def test_truncate_to_tokens_keeps_a_prefix_within_the_cap() -> None:
    text = "枡元さんの誕生日は3月12日だよ。" * 20
    cut = truncate_to_tokens(text, 10)
    assert text.startswith(cut)
    assert 0 < count_tokens(cut) <= 10
    assert truncate_to_tokens("短い", 100) == "短い"
    assert truncate_to_tokens("短い", 0) == ""


def test_message_json_round_trip_keeps_japanese_readable() -> None:
    message = make_message(7, "assistant", "お兄ちゃん、おかえり！")
    raw = message.to_json()
    assert "お兄ちゃん" in raw and " " not in raw
    assert Message.from_json(raw.encode()) == message
