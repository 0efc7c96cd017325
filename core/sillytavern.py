"""SillyTavern chat files (.jsonl) as a transcript.

The shape, as SillyTavern writes it (checked against SillyTavern/SillyTavern at ba6f7b7,
2024-09): `saveChat` in public/script.js posts `[{user_name, character_name, create_date,
chat_metadata}, ...chat]` and POST /api/chats/save in src/endpoints/chats.js writes
`chatData.map(JSON.stringify).join('\\n')`: a header line, then one message per line.
A message has `name`, `is_user`, `is_system`, `send_date`, `mes`, `extra`, and on
generated messages `swipes` (every swipe's text), `swipe_id` (the one shown; `mes` is its
text) and `swipe_info` (per swipe `send_date`, ...). SillyTavern's own import accepts a
header with `user_name` or `name` (chats.js, /import). `send_date` is what
`getMessageTimeStamp` wrote ("June 19, 2023 2:20pm", public/scripts/RossAscends-mods.js),
epoch milliseconds in older files, or the "humanized" 2024-7-12@01h31m37s form
(public/scripts/utils.js parseTimestamp reads all three, and so does `st_time` here).

Pairing into turns (user, then しぃ's reply):
* system messages (`is_system`: narrator lines, notes) are skipped;
* consecutive messages of the same side become one message, joined by a blank line (a
  user who sent two messages in a row, a character who wrote twice): nothing is lost;
* the character's greeting before the user's first message (SillyTavern starts every chat
  with it) becomes turn 1's reply, its user message the fixed OPENING text;
* a last user message without a reply becomes a last turn without reply;
* the swipes of a reply that is one message become its alternatives, `swipe_id` chosen;
  merged replies keep only their joined text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.errors import InvalidInput
from core.models import iso
from core.transfer import (
    ImportLimits,
    Said,
    Transcript,
    TurnRecord,
    counted,
    keep_alternatives,
    too_many_turns,
)

OPENING = "（会話のはじまり）"
JOIN = "\n\n"
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
MERIDIEM = re.compile(r"(\w+)\s(\d{1,2}),\s(\d{4})\s(\d{1,2}):(\d{1,2})\s*(am|pm)", re.I)
HUMANIZED = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})\s*@\s*(\d{1,2})h\s*(\d{1,2})m\s*(\d{1,2})s(?:\s*(\d{1,3})ms)?")


def is_header(data: Any) -> bool:
    return isinstance(data, dict) and ("user_name" in data or "character_name" in data
                                       or "chat_metadata" in data) and "mes" not in data


def looks_like_sillytavern(first_line: str) -> bool:
    try:
        return is_header(json.loads(first_line))
    except (ValueError, RecursionError):
        return False


@dataclass
class _Side:
    """Consecutive messages of one side, until the other side speaks."""

    line: int
    texts: list[str] = field(default_factory=list)
    created_at: str = ""
    swipes: list[Said] = field(default_factory=list)
    swipe_id: int = 0


def line_error(line: int, what: str) -> InvalidInput:
    return InvalidInput(f"SillyTavern のファイルの {line} 行目が正しくありません: {what}")


def parse_sillytavern(text: str, *, limits: ImportLimits, now: datetime | None = None,
                      ) -> Transcript:
    """A SillyTavern .jsonl chat as a transcript; InvalidInput naming the line."""
    fallback = iso(now or datetime.now(UTC)) or ""
    lines = text.splitlines()
    if not lines or not looks_like_sillytavern(lines[0]):
        raise line_error(1, "ヘッダー（user_name / character_name）がありません。")
    turns: list[tuple[_Side, _Side | None]] = []
    user: _Side | None = None
    reply: _Side | None = None
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        message = read_message(raw, number)
        if message.get("is_system"):
            continue
        said_text = message["mes"]
        created = st_time(message.get("send_date")) or fallback
        if message.get("is_user"):
            if reply is not None or user is None:
                if user is not None:
                    turns.append((user, reply))
                    if len(turns) >= limits.max_turns:  # and one more starts here
                        raise too_many_turns(limits)
                user, reply = _Side(line=number, created_at=created), None
            user.texts.append(said_text)
            continue
        if user is None:  # the greeting, before anyone wrote
            user = _Side(line=number, texts=[OPENING], created_at=created)
        if reply is None:
            reply = _Side(line=number, created_at=created)
        reply.texts.append(said_text)
        reply.swipes, reply.swipe_id = swipes_of(message, created, number)
    if user is not None:
        turns.append((user, reply))
    return Transcript(turns=tuple(as_turn(u, r, limits) for u, r in turns))


def read_message(raw: str, number: int) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise line_error(number, f"JSON として読めません（{exc.msg}、{exc.colno} 文字目）。") from exc
    except RecursionError as exc:
        raise line_error(number, "入れ子が深すぎます。") from exc
    if not isinstance(data, dict):
        raise line_error(number, "オブジェクトが必要です。")
    if not isinstance(data.get("mes"), str):
        raise line_error(number, "mes（本文）の文字列がありません。")
    if "is_user" in data and not isinstance(data["is_user"], bool):
        raise line_error(number, "is_user は true か false です。")
    return data


def swipes_of(message: dict[str, Any], created: str, number: int) -> tuple[list[Said], int]:
    swipes = message.get("swipes")
    if swipes is None:
        return [], 0
    if not isinstance(swipes, list) or not all(isinstance(s, str) for s in swipes):
        raise line_error(number, "swipes は文字列のリストです。")
    swipe_id = message.get("swipe_id", 0)
    if isinstance(swipe_id, bool) or not isinstance(swipe_id, int) or not (
            0 <= swipe_id < len(swipes)):
        raise line_error(number, f"swipe_id は 0〜{len(swipes) - 1} の整数です。")
    infos = message.get("swipe_info")
    infos = infos if isinstance(infos, list) and len(infos) == len(swipes) else []
    out = []
    for i, text in enumerate(swipes):
        info = infos[i] if infos and isinstance(infos[i], dict) else {}
        shown = message["mes"] if i == swipe_id else text  # `mes` is the swipe shown
        out.append(Said(text=shown, created_at=st_time(info.get("send_date")) or created))
    return out, swipe_id


def as_turn(user: _Side, reply: _Side | None, limits: ImportLimits) -> TurnRecord:
    said = checked(user, JOIN.join(user.texts), limits.max_message_chars)
    if reply is None:
        return TurnRecord(user=said)
    if len(reply.texts) == 1 and reply.swipes:
        usable = [s for s in reply.swipes if s.text.strip()]
        if reply.swipes[reply.swipe_id] in usable:
            chosen = usable.index(reply.swipes[reply.swipe_id])
            for s in usable:
                check_length(reply.line, s.text, limits.max_reply_chars)
            kept, chosen = keep_alternatives([counted(s) for s in usable], chosen)
            return TurnRecord(user=said, replies=kept, chosen=chosen)
    text = JOIN.join(reply.texts)
    return TurnRecord(user=said, replies=(checked(reply, text, limits.max_reply_chars),),
                      chosen=0)


def checked(side: _Side, text: str, max_chars: int) -> Said:
    if not text.strip():
        raise line_error(side.line, "mes（本文）が空です。")
    check_length(side.line, text, max_chars)
    return counted(Said(text=text, created_at=side.created_at))


def check_length(line: int, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise line_error(line, f"メッセージが長すぎます（{len(text)} 文字、最大 {max_chars}）。")


def st_time(value: Any) -> str | None:
    """A SillyTavern send_date as our ISO time; None when it is missing or unreadable."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
            return iso(datetime.fromtimestamp(float(value) / 1000, UTC))
        if not isinstance(value, str):
            return None
        if m := HUMANIZED.search(value):
            y, mo, d, h, mi, s, ms = m.groups()
            return iso(datetime(int(y), int(mo), int(d), int(h), int(mi), int(s),
                                int(ms or 0) * 1000, tzinfo=UTC))
        if (m := MERIDIEM.search(value)) and m.group(1).lower() in MONTHS:
            month, d, y, h, mi, half = m.groups()
            hour = int(h) % 12 + (12 if half.lower() == "pm" else 0)
            return iso(datetime(int(y), MONTHS.index(month.lower()) + 1, int(d), hour,
                                int(mi), tzinfo=UTC))
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return iso(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    except (ValueError, OverflowError, OSError):
        return None
