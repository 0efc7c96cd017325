"""The file formats alone: our JSON, Markdown, SillyTavern chats (core/transfer.py,
core/sillytavern.py). No Redis."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from context.tokens import count_tokens
from core import keys
from core.errors import InvalidInput
from core.sillytavern import OPENING, parse_sillytavern, st_time
from core.transfer import (
    ImportLimits,
    Said,
    Transcript,
    TurnRecord,
    counted,
    parse_json,
    to_json,
    to_markdown,
)
from core.transfer_store import parse_upload

LIMITS = ImportLimits(max_turns=50, max_message_chars=100)
T0 = "2025-01-02T03:04:05.000Z"
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def said(text: str, job_id: str | None = None) -> Said:
    return Said(text=text, created_at=T0, tokens=count_tokens(text), job_id=job_id)


def sample() -> Transcript:
    return Transcript(turns=(
        TurnRecord(user=said("こんにちは"), replies=(said("やっほー", "j1"),), chosen=0),
        TurnRecord(user=said("猫の名前は？"), replies=(said("タマ", "j2"), said("ミケ", "j3"),
                                                     said("クロ", "j4")), chosen=1),
        TurnRecord(user=said("落ちた質問")),
    ))


def jsonl(*lines: dict[str, Any]) -> str:
    return "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)


HEADER = {"user_name": "お兄ちゃん", "character_name": "しぃ", "create_date": "2024-7-12@01h31m37s",
          "chat_metadata": {"integrity": "x"}}


def st(name: str, text: str, *, user: bool, **extra: Any) -> dict[str, Any]:
    return {"name": name, "is_user": user, "is_system": False,
            "send_date": "June 19, 2023 2:20pm", "mes": text, "extra": {}, **extra}


# -- our JSON ------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_reply_and_the_chosen_one() -> None:
    exported = json.loads(json.dumps(to_json("c1", sample(), now=NOW)))
    assert exported["format"] == "mysisterdb.conversation" and exported["version"] == 1
    assert exported["turns"][1]["chosen"] == 1 and exported["turns"][2]["chosen"] is None
    back = parse_json(exported, limits=LIMITS)
    # Job ids stay behind (the new conversation has its own jobs); all else is the same.
    assert back == Transcript(turns=tuple(
        TurnRecord(user=counted(r.user), replies=tuple(counted(s) for s in r.replies),
                   chosen=r.chosen) for r in sample().turns))
    assert back.turns[1].reply is not None and back.turns[1].reply.text == "ミケ"


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d["turns"][1].update(chosen=3), "turns[1].chosen"),
    (lambda d: d["turns"][2].update(chosen=0), "turns[2].chosen"),
    (lambda d: d["turns"][0]["user"].update(text=" "), "turns[0].user.text"),
    (lambda d: d["turns"][0]["user"].update(text="x" * 101), "turns[0].user.text"),
    (lambda d: d["turns"][1]["replies"][0].update(created_at="昨日"),
     "turns[1].replies[0].created_at"),
    (lambda d: d["turns"][1].update(turn=5), "turns[1].turn"),
    (lambda d: d["turns"][0].update(replies=[d["turns"][0]["replies"][0]] * 11),
     "turns[0].replies"),
])
def test_a_bad_field_is_named(change: Any, where: str) -> None:
    data = to_json("c1", sample(), now=NOW)
    change(data)
    with pytest.raises(InvalidInput, match=re.escape(f"{where} ")):
        parse_json(data, limits=LIMITS)


def test_a_reply_may_be_longer_than_a_user_message_within_bounds() -> None:
    data = to_json("c1", sample(), now=NOW)
    data["turns"][0]["replies"][0]["text"] = "x" * 400
    assert parse_json(data, limits=LIMITS).turns[0].replies[0].text == "x" * 400
    data["turns"][0]["replies"][0]["text"] = "x" * 401
    with pytest.raises(InvalidInput, match="最大 400"):
        parse_json(data, limits=LIMITS)


def test_too_many_turns_is_refused() -> None:
    data = to_json("c1", sample(), now=NOW)
    with pytest.raises(InvalidInput, match="最大 2 ターン"):
        parse_json(data, limits=ImportLimits(max_turns=2, max_message_chars=100))


def test_markdown_shows_the_chosen_thread() -> None:
    md = to_markdown("c1", sample())
    assert "## 2\n\n**あなた**（2025-01-02 03:04 UTC）:\n\n猫の名前は？\n\n**しぃ**:\n\nミケ" in md
    assert "タマ" not in md and "クロ" not in md
    assert "## 3" in md and "返事はありません" in md


# -- SillyTavern ---------------------------------------------------------------------------


def test_sillytavern_pairs_turns_merges_same_side_and_skips_system() -> None:
    text = jsonl(HEADER,
                 st("しぃ", "いらっしゃい！", user=False),
                 st("お兄ちゃん", "ただいま", user=True),
                 st("お兄ちゃん", "お腹すいた", user=True),
                 {**st("System", "場面転換", user=False), "is_system": True},
                 # `mes` is what was shown (edited after it was generated, here).
                 st("しぃ", "おかえり！", user=False, swipes=["おかえり", "おかえりなさい"],
                    swipe_id=0),
                 st("お兄ちゃん", "ミケは元気？", user=True),
                 st("しぃ", "元気だよ", user=False, swipes=["寝てる", "元気だよ", " "],
                    swipe_id=1, swipe_info=[{"send_date": 1718000000000}, {}, {}]),
                 st("お兄ちゃん", "返事のない最後", user=True))
    turns = parse_sillytavern(text, limits=LIMITS, now=NOW).turns
    assert [t.user.text for t in turns] == [OPENING, "ただいま\n\nお腹すいた", "ミケは元気？",
                                            "返事のない最後"]
    assert turns[0].reply is not None and turns[0].reply.text == "いらっしゃい！"
    assert [s.text for s in turns[1].replies] == ["おかえり！", "おかえりなさい"]
    assert [s.text for s in turns[2].replies] == ["寝てる", "元気だよ"]  # a blank swipe: gone
    assert turns[2].chosen == 1 and turns[3].replies == ()
    assert turns[2].replies[0].created_at == "2024-06-10T06:13:20.000Z"
    assert turns[1].user.created_at == "2023-06-19T14:20:00.000Z"
    assert turns[1].user.tokens == count_tokens("ただいま\n\nお腹すいた")


def test_sillytavern_keeps_the_chosen_swipe_and_the_newest_others() -> None:
    swipes = [f"案{i}" for i in range(15)]
    text = jsonl(HEADER, st("a", "q", user=True),
                 st("b", "案2", user=False, swipes=swipes, swipe_id=2))
    turn = parse_sillytavern(text, limits=LIMITS).turns[0]
    assert len(turn.replies) == keys.max_alternatives
    assert turn.reply is not None and turn.reply.text == "案2"
    assert [s.text for s in turn.replies][1:] == swipes[-(keys.max_alternatives - 1):]


@pytest.mark.parametrize(("lines", "line", "what"), [
    ([{"mes": "no header"}], 1, "ヘッダー"),
    ([HEADER, "{not json"], 2, "JSON"),
    ([HEADER, {"name": "a", "is_user": True}], 2, "mes"),
    ([HEADER, st("a", "q", user=True), st("b", "x" * 401, user=False)], 3, "長すぎ"),
    ([HEADER, st("a", "x" * 101, user=True)], 2, "長すぎ"),
    ([HEADER, st("a", "q", user=True), st("b", "r", user=False, swipes=["r"], swipe_id=4)],
     3, "swipe_id"),
    ([HEADER, st("a", "q", user=True), st("b", "r", user=False, swipes="r")], 3, "swipes"),
    ([HEADER, st("a", "q", user="yes")], 2, "is_user"),
])
def test_sillytavern_errors_name_the_line(lines: list[Any], line: int, what: str) -> None:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    with pytest.raises(InvalidInput, match=rf"{line} 行目.*{what}"):
        parse_sillytavern(text, limits=LIMITS)


def test_sillytavern_turn_bound_stops_early() -> None:
    pairs = [st("a", f"q{i}", user=i % 2 == 0) for i in range(10)]
    limits = ImportLimits(max_turns=4, max_message_chars=100)
    with pytest.raises(InvalidInput, match="最大 4 ターン"):
        parse_sillytavern(jsonl(HEADER, *pairs), limits=limits)
    assert len(parse_sillytavern(jsonl(HEADER, *pairs[:8]), limits=limits).turns) == 4


@pytest.mark.parametrize(("value", "expected"), [
    ("June 19, 2023 2:20pm", "2023-06-19T14:20:00.000Z"),
    ("June 19, 2023 12:05am", "2023-06-19T00:05:00.000Z"),
    ("2024-7-12@01h31m37s", "2024-07-12T01:31:37.000Z"),
    ("2024-6-5 @14h 56m 50s 682ms", "2024-06-05T14:56:50.682Z"),
    (1718000000000, "2024-06-10T06:13:20.000Z"),
    ("2024-06-10T06:13:20Z", "2024-06-10T06:13:20.000Z"),
    ("someday", None), (None, None), (True, None),
])
def test_sillytavern_dates(value: Any, expected: str | None) -> None:
    assert st_time(value) == expected


# -- telling the formats apart ---------------------------------------------------------------


def test_upload_detects_the_format() -> None:
    ours = json.dumps(to_json("c1", sample(), now=NOW), ensure_ascii=False, indent=1).encode()
    assert parse_upload(ours, limits=LIMITS)[0] == "mysisterdb"
    tavern = jsonl(HEADER, st("a", "q", user=True)).encode()
    assert parse_upload("\ufeff".encode() + tavern, limits=LIMITS)[0] == "sillytavern"
    for junk, what in [(b"\xff\xfe", "UTF-8"), (b"hello", "対応していない形式"),
                       (b'{"format": "other"}', "対応していない形式"),
                       (b"[" * 100000, "対応していない形式"),
                       (jsonl(HEADER).encode(), "ターン）がありません"),
                       (json.dumps(to_json("c", Transcript())).encode(), "ターン）がありません")]:
        with pytest.raises(InvalidInput, match=what):
            parse_upload(junk, limits=LIMITS)
