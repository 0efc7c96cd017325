"""Reading a conversation as a transcript (export, branch) and writing a new one from a
transcript (import, branch) so that it appears whole or not at all.

Writing a whole conversation in one MULTI/EXEC would hold Redis for as long as indexing
thousands of messages takes (each append runs the index script: about a second for 5,000
turns), and every other request, and the API's store monitor (down after 0.6 s without an
answer), would wait behind it. So the messages, their index and the alternatives are
written first under a staging id that no route can name (`~` is not allowed in a
conversation id), in bounded pipelines; then one short transaction renames every staged
key to the new conversation's key and writes its owner, turn counter and list entries. A
failure before it deletes the staged keys; a process that dies before it leaves them to
the next import, which deletes stagings older than keys.transfer_staging_stale_s.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from context.redis_layout import readable
from context.redis_store import RedisHistoryStore
from context.types import Message, is_user_seq, reply_seq, turn_of, user_seq
from core import keys
from core.alternatives import Alternatives, Reply
from core.errors import CONVERSATION_NOT_FOUND, Conflict, InvalidInput, MySisterDBError, NotFound
from core.lifecycle import stored_owner, touch
from core.ports import Broker
from core.redis_client import run_transaction, to_str
from core.sillytavern import looks_like_sillytavern, parse_sillytavern
from core.transfer import ImportLimits, Said, Transcript, TurnRecord, looks_like_ours, parse_json

logger = logging.getLogger(__name__)

STAGING_PREFIX = "~staging-"
BATCH = 500  # messages per pipeline while staging: Redis answers others in between
ID_TAKEN = "この会話 ID はすでに使われています。別の ID にするか、指定せずに送ってください。"


class TooSlow(MySisterDBError):
    """The write outlived its request's budget: the client was answered 504 already, so
    nothing may appear after all."""

    default_message = "時間内に終わらなかったため、何も保存しませんでした。"


@dataclass(frozen=True)
class Stored:
    """A conversation as stored: its turns by their own numbers, and the turns whose job is
    queued or running."""

    turns: list[tuple[int, TurnRecord]]
    running: set[int]


def parse_upload(raw: bytes, *, limits: ImportLimits) -> tuple[str, Transcript]:
    """An uploaded file as ("mysisterdb" or "sillytavern", its transcript); InvalidInput
    for anything else, naming the line or field that is wrong."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"ファイルが UTF-8 ではありません（{exc.start} バイト目）。") from exc
    source, transcript = parse_text(text, limits=limits)
    if not transcript.turns:
        raise InvalidInput("取り込むファイルに会話（ターン）がありません。")
    return source, transcript


def parse_text(text: str, *, limits: ImportLimits) -> tuple[str, Transcript]:
    first = text.lstrip().partition("\n")[0]
    if looks_like_sillytavern(first):
        return "sillytavern", parse_sillytavern(text, limits=limits)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(
            "対応していない形式です。このサーバーの JSON エクスポートか、SillyTavern のチャット"
            f"（.jsonl）を送ってください（{exc}）。") from exc
    if not looks_like_ours(data):
        raise InvalidInput("対応していない形式です。このサーバーの JSON エクスポート（format: "
                           "mysisterdb.conversation）か、SillyTavern のチャットを送ってください。")
    return "mysisterdb", parse_json(data, limits=limits)


def new_conversation_id() -> str:
    """Like the chat page's (api/static/js/sidebar.js newConversationId)."""
    return f"c-{uuid.uuid4().hex[:12]}"


def said(message: Message) -> Said:
    return Said(text=message.text, created_at=message.created_at, tokens=message.tokens,
                job_id=message.job_id)


def alternatives_of(raw: bytes | str | None) -> tuple[tuple[Said, ...], int] | None:
    """A turn's entry in keys.conv_alternatives; None when absent or unreadable."""
    if raw is None:
        return None
    try:
        stored = Alternatives.loads(raw)
        replies = tuple(Said(text=r.text, created_at=r.created_at, tokens=r.tokens,
                             job_id=r.job_id) for r in stored.replies)
        chosen = stored.chosen
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("unreadable alternatives entry skipped: %s", exc)
        return None
    return (replies, chosen) if replies and 0 <= chosen < len(replies) else None


def alternatives_json(record: TurnRecord) -> str:
    return Alternatives(chosen=record.chosen or 0, replies=[  # written for turns with replies
        Reply(text=s.text, tokens=s.tokens, job_id=s.job_id, created_at=s.created_at)
        for s in record.replies]).dumps()


def messages_of(transcript: Transcript) -> Iterator[Message]:
    for t, record in enumerate(transcript.turns, start=1):
        yield Message(seq=user_seq(t), role="user", text=record.user.text,
                      tokens=record.user.tokens, created_at=record.user.created_at)
        if (reply := record.reply) is not None:
            yield Message(seq=reply_seq(t), role="assistant", text=reply.text,
                          tokens=reply.tokens, created_at=reply.created_at)


def renumbered(turns: Sequence[TurnRecord]) -> Transcript:
    """Turns copied into a new conversation: no job ids (its jobs are not the copy's)."""
    return Transcript(turns=tuple(TurnRecord(
        user=Said(text=r.user.text, created_at=r.user.created_at, tokens=r.user.tokens),
        replies=tuple(Said(text=s.text, created_at=s.created_at, tokens=s.tokens)
                      for s in r.replies), chosen=r.chosen) for r in turns))


class TransferStore:
    def __init__(self, *, client: redis.Redis, history: RedisHistoryStore,
                 broker: Broker | None, embeddings: bool = False) -> None:
        self.redis = client
        self.history = history
        self.broker = broker
        self.embeddings = embeddings

    # -- reading --------------------------------------------------------------------------

    def check_owned(self, cid: str, person: str) -> None:
        """NotFound unless the conversation exists and is `person`'s (another person's
        answers like one that does not exist)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.conv_owner(cid))
            pipe.exists(keys.conv_turn(cid), keys.conv_messages(cid))
            raw, exists = pipe.execute()
        if not exists or stored_owner(raw, existed=True) != person:
            raise NotFound(CONVERSATION_NOT_FOUND)

    def read(self, cid: str) -> Stored:
        users: dict[int, Message] = {}
        replies: dict[int, Message] = {}
        raws = (raw for raw, _ in self.history.raw_members(cid))
        for m in readable(raws, conversation_id=cid):
            (users if is_user_seq(m.seq) else replies)[turn_of(m.seq)] = m
        alternatives = {int(to_str(t)): v
                        for t, v in self.redis.hgetall(keys.conv_alternatives(cid)).items()}
        line: list[Any] = self.redis.zrange(keys.conv_active(cid), 0, -1, withscores=True)
        running = {int(float(score)) for _, score in line}
        turns = []
        for t in sorted(users):
            record = TurnRecord(user=said(users[t]))
            if (alt := alternatives_of(alternatives.get(t))) is not None:
                record = TurnRecord(user=record.user, replies=alt[0], chosen=alt[1])
            elif t in replies:
                record = TurnRecord(user=record.user, replies=(said(replies[t]),), chosen=0)
            turns.append((t, record))
        return Stored(turns=turns, running=running)

    def transcript(self, cid: str) -> Transcript:
        return Transcript(turns=tuple(r for _, r in self.read(cid).turns))

    # -- branch ---------------------------------------------------------------------------

    def branch(self, cid: str, *, person: str, turn: int, new_id: str,
               deadline: float | None = None) -> int:
        """A new conversation of `person`'s holding turns 1..`turn` of `cid` (every stored
        turn up to it, with its alternatives); returns how many turns it holds."""
        self.check_owned(cid, person)
        stored = self.read(cid)
        numbers = [t for t, _ in stored.turns]
        if turn not in numbers:
            span = f"{numbers[0]}〜{numbers[-1]}" if numbers else "（ターンがありません）"
            raise InvalidInput(f"turn はこの会話のターン番号で指定してください: {span}")
        if any(t <= turn for t in stored.running):
            raise Conflict("まだ返事を書いている途中のターンがあります。終わってから分岐してください。")
        kept = [r for t, r in stored.turns if t <= turn]
        if kept[-1].reply is None:
            raise InvalidInput(f"ターン {turn} には返事がありません。返事のあるターンで分岐してください。")
        self.create(new_id, owner=person, transcript=renumbered(kept), deadline=deadline)
        return len(kept)

    # -- writing --------------------------------------------------------------------------

    def create(self, cid: str, *, owner: str, transcript: Transcript,
               deadline: float | None = None) -> None:
        """Write the conversation whole (see the module docstring); Conflict if `cid` is
        taken. Then its summary is queued (and its embeddings, when they are on)."""
        self.discard_stale()
        if self._taken(cid):  # early, before the work; the publish checks again
            raise Conflict(ID_TAKEN)
        staging = STAGING_PREFIX + uuid.uuid4().hex
        self.redis.zadd(keys.transfer_staging(), {staging: time.time()})
        try:
            self._stage(staging, transcript, deadline)
            if deadline is not None and time.monotonic() > deadline:
                raise TooSlow()
            run_transaction(self.redis, lambda pipe: self._publish_once(
                pipe, staging=staging, cid=cid, owner=owner, turns=len(transcript.turns)),
                what=f"publish {cid}")
        except BaseException:
            self.discard(staging)
            raise
        logger.info("conversation %s written (%d turns) for %s", cid, len(transcript.turns),
                    owner)
        self._queue_background(cid)

    def _taken(self, cid: str) -> bool:
        return bool(self.redis.exists(*self._guarded(cid))) or self.redis.zscore(
            keys.conversations_by_activity(), cid) is not None

    @staticmethod
    def _guarded(cid: str) -> list[str]:
        return [keys.conv_turn(cid), keys.conv_owner(cid), keys.conv_messages(cid),
                keys.conv_active(cid), keys.conv_jobs(cid)]

    def _stage(self, staging: str, transcript: Transcript, deadline: float | None) -> None:
        messages = list(messages_of(transcript))
        for start in range(0, len(messages), BATCH):
            self.history.append_many(staging, messages[start:start + BATCH])
            if deadline is not None and time.monotonic() > deadline:
                raise TooSlow()
        alternatives = {str(t): alternatives_json(r)
                        for t, r in enumerate(transcript.turns, start=1) if len(r.replies) > 1}
        items = list(alternatives.items())
        for start in range(0, len(items), BATCH):
            self.redis.hset(keys.conv_alternatives(staging),
                            mapping=dict(items[start:start + BATCH]))

    def _staged_keys(self, pipe: Pipeline, staging: str) -> list[str]:
        """Every key the staging holds (the store lists what it may have; keep those that
        exist: a RENAME of a missing key would fail alone inside the MULTI)."""
        candidates = [*self.history.conversation_keys(staging, watching=pipe),
                      keys.conv_alternatives(staging)]
        with self.redis.pipeline(transaction=False) as check:
            for key in candidates:
                check.exists(key)
            present = check.execute()
        return [k for k, there in zip(candidates, present, strict=True) if there]

    def _publish_once(self, pipe: Pipeline, *, staging: str, cid: str, owner: str,
                      turns: int) -> None:
        # Not the activity list: every chat anywhere moves it. A submit to `cid` writes its
        # turn counter, which is watched.
        pipe.watch(*self._guarded(cid))
        if pipe.exists(*self._guarded(cid)) or pipe.zscore(
                keys.conversations_by_activity(), cid) is not None:
            raise Conflict(ID_TAKEN)
        staged = self._staged_keys(pipe, staging)
        source, target = keys.conv_prefix(staging), keys.conv_prefix(cid)
        pipe.multi()
        for key in staged:
            pipe.rename(key, target + key[len(source):])
        pipe.set(keys.conv_turn(cid), turns)
        pipe.set(keys.conv_owner(cid), owner)
        pipe.sadd(keys.conversations(), cid)
        touch(pipe, cid, owner)
        pipe.zrem(keys.transfer_staging(), staging)
        pipe.execute()

    def discard(self, staging: str) -> None:
        """Delete a staging's keys (best effort: what is left, the next import deletes)."""
        try:
            self.history.reset(staging)
            self.redis.delete(keys.conv_alternatives(staging))
            self.redis.zrem(keys.transfer_staging(), staging)
        except redis.RedisError as exc:
            logger.warning("staging %s not deleted (%s); the next import deletes it",
                           staging, exc)

    def discard_stale(self) -> None:
        stale: list[Any] = self.redis.zrangebyscore(
            keys.transfer_staging(), "-inf", time.time() - keys.transfer_staging_stale_s)
        for raw in stale:
            logger.warning("deleting the leftovers of an interrupted import (%s)", to_str(raw))
            self.discard(to_str(raw))

    def _queue_background(self, cid: str) -> None:
        """The summary (and embeddings) of the new conversation, off the request. Queued
        without the summary's once-flag (workers/once.py, which the API cannot import): a
        task whose token is not the flag's never keeps nor releases it, and a summary never
        goes backwards (set_summary), so a second task at worst folds the same batch twice."""
        if self.broker is None:
            return
        try:
            self.broker.request_summary(cid, token="")
            if self.embeddings:
                self.broker.request_embedding(cid, after_seq=0)
        except Exception as exc:  # an optimisation: the next chat reply queues it again
            logger.warning("summary of %s not queued: %s", cid, exc)
