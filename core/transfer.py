"""A conversation as a file and back: our lossless JSON, a readable Markdown, and (in
core/sillytavern.py) SillyTavern's chat files. Pure functions on a `Transcript`; reading
and writing Redis is core/transfer_store.py's.

A transcript is the conversation's turns in order: turn t (1-based) is the user's message
and every reply the turn has had (regenerated turns keep several, `keys.conv_alternatives`)
with the index of the chosen one, or no reply at all (a failed turn, or one still running
when it was exported).

Our JSON (version 1)::

    {"format": "mysisterdb.conversation", "version": 1, "conversation_id": "...",
     "exported_at": "2025-01-01T00:00:00.000Z",
     "turns": [{"turn": 1,
                "user": {"text": "...", "created_at": "...", "tokens": 12},
                "chosen": 0,            # index into replies; null without a reply
                "replies": [{"text": "...", "created_at": "...", "tokens": 30,
                             "job_id": "..."}]}]}

On import the token counts are counted again (they steer the prompt budget: a file does
not get to say them) and job ids are dropped (the jobs belong to the conversation the file
came from; the new one has none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from context.tokens import count_tokens
from core import keys
from core.errors import InvalidInput
from core.models import iso

FORMAT = "mysisterdb.conversation"
VERSION = 1
# A reply may be longer than what a user can type in one message (Gemini writes it).
REPLY_CHARS_FACTOR = 4
USER_LABEL = "あなた"
PERSONA_LABEL = "しぃ"


@dataclass(frozen=True)
class Said:
    """One message's content, as stored."""

    text: str
    created_at: str
    tokens: int = 0
    job_id: str | None = None


@dataclass(frozen=True)
class TurnRecord:
    user: Said
    replies: tuple[Said, ...] = ()
    chosen: int | None = None  # index into replies; None exactly when there is none

    def __post_init__(self) -> None:
        if (self.chosen is None) != (not self.replies) or (
                self.chosen is not None and not 0 <= self.chosen < len(self.replies)):
            raise ValueError(f"chosen {self.chosen} does not fit {len(self.replies)} replies")

    @property
    def reply(self) -> Said | None:
        return self.replies[self.chosen] if self.chosen is not None else None


@dataclass(frozen=True)
class Transcript:
    turns: tuple[TurnRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ImportLimits:
    max_turns: int
    max_message_chars: int

    @property
    def max_reply_chars(self) -> int:
        return self.max_message_chars * REPLY_CHARS_FACTOR


def counted(said: Said) -> Said:
    """The message with its tokens counted here and no job id (see the module docstring)."""
    return Said(text=said.text, created_at=said.created_at, tokens=count_tokens(said.text))


def keep_alternatives(replies: list[Said], chosen: int) -> tuple[tuple[Said, ...], int]:
    """At most keys.max_alternatives replies: the chosen one and the newest others."""
    if len(replies) <= keys.max_alternatives:
        return tuple(replies), chosen
    others = [i for i in range(len(replies)) if i != chosen][-(keys.max_alternatives - 1):]
    kept = sorted([chosen, *others])
    return tuple(replies[i] for i in kept), kept.index(chosen)


# -- our JSON -------------------------------------------------------------------------------


def said_json(said: Said) -> dict[str, Any]:
    out: dict[str, Any] = {"text": said.text, "created_at": said.created_at,
                           "tokens": said.tokens}
    if said.job_id is not None:
        out["job_id"] = said.job_id
    return out


def to_json(conversation_id: str, transcript: Transcript, *, now: datetime | None = None,
            ) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "conversation_id": conversation_id,
            "exported_at": iso(now or datetime.now(UTC)),
            "turns": [{"turn": t, "user": said_json(r.user), "chosen": r.chosen,
                       "replies": [said_json(s) for s in r.replies]}
                      for t, r in enumerate(transcript.turns, start=1)]}


def bad(where: str, what: str) -> InvalidInput:
    return InvalidInput(f"取り込むファイルの {where} が正しくありません: {what}")


def looks_like_ours(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def parse_json(data: Any, *, limits: ImportLimits) -> Transcript:
    """Our export (already decoded from JSON) as a transcript; InvalidInput naming the field."""
    if not looks_like_ours(data):
        raise bad("format", f"\"{FORMAT}\" ではありません。")
    if data.get("version") != VERSION:
        raise bad("version", f"対応しているのは {VERSION} だけです。")
    turns = data.get("turns")
    if not isinstance(turns, list):
        raise bad("turns", "ターンのリストが必要です。")
    if len(turns) > limits.max_turns:
        raise too_many_turns(limits)
    return Transcript(turns=tuple(parse_turn(raw, i, limits) for i, raw in enumerate(turns)))


def too_many_turns(limits: ImportLimits) -> InvalidInput:
    return InvalidInput(f"会話が長すぎて取り込めません（最大 {limits.max_turns} ターン）。")


def parse_turn(raw: Any, index: int, limits: ImportLimits) -> TurnRecord:
    where = f"turns[{index}]"
    if not isinstance(raw, dict):
        raise bad(where, "オブジェクトが必要です。")
    if raw.get("turn", index + 1) != index + 1:
        raise bad(f"{where}.turn", f"{index + 1} のはずです（ターンは 1 から順に並べます）。")
    user = parse_said(raw.get("user"), f"{where}.user", limits.max_message_chars)
    replies_raw = raw.get("replies", [])
    if not isinstance(replies_raw, list):
        raise bad(f"{where}.replies", "リストが必要です。")
    if len(replies_raw) > keys.max_alternatives:
        raise bad(f"{where}.replies", f"返事は 1 ターン {keys.max_alternatives} 個までです。")
    replies = tuple(parse_said(r, f"{where}.replies[{i}]", limits.max_reply_chars)
                    for i, r in enumerate(replies_raw))
    chosen = raw.get("chosen")
    if replies and (isinstance(chosen, bool) or not isinstance(chosen, int)
                    or not 0 <= chosen < len(replies)):
        raise bad(f"{where}.chosen", f"0〜{len(replies) - 1} の整数が必要です。")
    if not replies and chosen is not None:
        raise bad(f"{where}.chosen", "返事がないターンでは null です。")
    return TurnRecord(user=user, replies=replies, chosen=chosen if replies else None)


def parse_said(raw: Any, where: str, max_chars: int) -> Said:
    if not isinstance(raw, dict):
        raise bad(where, "オブジェクトが必要です。")
    text, created = raw.get("text"), raw.get("created_at")
    if not isinstance(text, str) or not text.strip():
        raise bad(f"{where}.text", "空でない文字列が必要です。")
    if len(text) > max_chars:
        raise bad(f"{where}.text", f"長すぎます（最大 {max_chars} 文字）。")
    if not isinstance(created, str) or parse_time(created) is None:
        raise bad(f"{where}.created_at", "ISO 8601 の日時が必要です。")
    return counted(Said(text=text, created_at=created))


def parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


# -- Markdown -------------------------------------------------------------------------------


def to_markdown(conversation_id: str, transcript: Transcript) -> str:
    """The chosen thread, for reading: a header per turn, who said what. Other replies of a
    regenerated turn are not shown (the JSON keeps them)."""
    lines = [f"# {PERSONA_LABEL}との会話（{conversation_id}）", ""]
    for t, record in enumerate(transcript.turns, start=1):
        lines += [f"## {t}", "", f"**{USER_LABEL}**（{shown_time(record.user.created_at)}）:",
                  "", record.user.text, ""]
        reply = record.reply
        if reply is None:
            lines += [f"*（{PERSONA_LABEL}の返事はありません）*", ""]
        else:
            lines += [f"**{PERSONA_LABEL}**:", "", reply.text, ""]
    return "\n".join(lines)


def shown_time(created_at: str) -> str:
    parsed = parse_time(created_at)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if parsed else created_at
