"""What a person does to the newest turn after its reply: another reply (regenerate), more of
the same reply (continue), a corrected message (edit and resend), another chosen reply.

Each is one transaction that checks the turn against the state table (`core.states`: the
newest turn only, never while its job runs), stores what changes and, for the first three,
a new job for the same turn. The turn is the newest and its job has ended, so the line is
empty: the new job is its head and is dispatched at once, like a submit.

How the reply is stored when the job ends is decided here too (`reply_writer`), by the job's
kind: a first reply is appended; a regenerated one joins the turn's alternatives and becomes
the remembered reply; a continued one replaces the reply it continued.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from redis.client import Pipeline

from context.types import Message, reply_seq, user_seq
from core import alternatives, keys
from core.alternatives import Alternatives
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import JobStore
from core.models import Job, iso
from core.records import stored_owner, touch
from core.redis_client import run_transaction, to_str
from core.states import Action, JobKind, TurnState, allows, turn_state

if TYPE_CHECKING:
    from core.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

TURN_NOT_FOUND = "指定されたターンは見つかりませんでした。"
# What a continue job asks the model after the text so far (a model turn of its own).
CONTINUE_PROMPT = "（今の返事の続きを、前置きなしでそのまま書いてください。）"


@dataclass(frozen=True)
class TurnNow:
    """The newest turn as read inside a transaction."""

    turn: int
    user: Message
    reply: Message | None
    job: Job | None
    alternatives: Alternatives | None
    state: TurnState


def _read_turn(lc: Lifecycle, pipe: Pipeline, cid: str, turn: int, person: str,
               action: Action) -> TurnNow:
    """Watch and read the turn; NotFound, or Conflict when the state table forbids `action`."""
    pipe.watch(keys.conv_turn(cid), keys.conv_owner(cid), keys.conv_jobs(cid),
               keys.conv_active(cid), keys.conv_messages(cid), keys.conv_alternatives(cid))
    newest = int(pipe.get(keys.conv_turn(cid)) or 0)
    if stored_owner(pipe.get(keys.conv_owner(cid)), existed=newest > 0) not in (None, person):
        raise NotFound(TURN_NOT_FOUND)
    if not 1 <= turn <= newest:
        raise NotFound(TURN_NOT_FOUND)
    messages = {m.seq: m for m in stored(pipe, cid, user_seq(turn), reply_seq(turn))}
    if user_seq(turn) not in messages:
        raise Conflict("このターンのメッセージが残っていないため、変更できません。")
    job_id = pipe.hget(keys.conv_jobs(cid), str(turn))
    job = None
    if job_id:
        pipe.watch(keys.job(to_str(job_id)))
        job = JobStore.read_watched(pipe, to_str(job_id))
    alts = alternatives.read(pipe, cid, turn)
    reply = messages.get(reply_seq(turn))
    state = turn_state(has_reply=reply is not None, job_status=job.status if job else None)
    count = len(alts.replies) if alts else (1 if reply else 0)
    if not allows(state, action, newest=turn == newest, alternatives=count):
        raise Conflict(refusal(state, action, newest=turn == newest))
    if pipe.zcard(keys.conv_active(cid)):  # a job of this conversation still runs or waits
        raise Conflict("まだ返事を生成中です。終わってからもう一度試してください。")
    return TurnNow(turn=turn, user=messages[user_seq(turn)], reply=reply, job=job,
                   alternatives=alts, state=state)


def refusal(state: TurnState, action: Action, *, newest: bool) -> str:
    if state in (TurnState.QUEUED, TurnState.IN_PROGRESS):
        return "まだ返事を生成中です。終わってからもう一度試してください。"
    if not newest:
        return "この操作は最新のターンだけにできます。前のターンを変えるには、そこから分岐してください。"
    return f"このターン（{state.value}）では {action.value} はできません。"


def _new_job(pipe: Pipeline, now: TurnNow, *, job_id: str, cid: str, person: str,
             kind: JobKind, continues: str = "", preview: str | None = None) -> Job:
    """Inside MULTI: the turn's new job, its head and outbox entry."""
    job = Job(id=job_id, conversation_id=cid, turn=now.turn, owner=person, kind=kind,
              continues=continues, partial_reply=continues,
              input_preview=(preview if preview is not None else now.user.text)[:200])
    JobStore.create(pipe, job)
    JobStore.put_in_outbox(pipe, job.id, at_epoch=time.time())
    return job


def _start(lc: Lifecycle, cid: str, what: str, body: Callable[[Pipeline, str], Job]) -> Job:
    """Run `body` with the new job's id; if Redis's answer to EXEC was lost, the stored job
    says whether it was applied."""
    job_id = uuid.uuid4().hex
    job: Job = run_transaction(lc.redis, lambda pipe: body(pipe, job_id),
                               recover=lambda: lc.jobs.find(job_id), what=f"{what} in {cid}")
    logger.info("job %s: %s of turn %d of %s", job.id, what, job.turn, cid)
    if lc.redis.zscore(keys.outbox(), job.id) is not None:
        lc.publish_now(job.id)
    return job


def regenerate(lc: Lifecycle, *, conversation_id: str, turn: int, person: str) -> Job:
    """Another reply to the same message; the turn keeps the ones it has."""
    def once(pipe: Pipeline, job_id: str) -> Job:
        now = _read_turn(lc, pipe, conversation_id, turn, person, Action.REGENERATE)
        pipe.multi()
        job = _new_job(pipe, now, job_id=job_id, cid=conversation_id, person=person,
                       kind=JobKind.REGENERATE)
        _touch(pipe, conversation_id, person)
        pipe.execute()
        return job

    return _start(lc, conversation_id, "regenerate", once)


def continue_turn(lc: Lifecycle, *, conversation_id: str, turn: int, person: str) -> Job:
    """More of the turn's reply: the stored one, or the text an incomplete job kept."""
    def once(pipe: Pipeline, job_id: str) -> Job:
        now = _read_turn(lc, pipe, conversation_id, turn, person, Action.CONTINUE)
        so_far = now.reply.text if now.reply else (now.job.partial_reply if now.job else "")
        if not so_far:
            raise Conflict("続ける返事がありません。もう一度試してください。")
        pipe.multi()
        job = _new_job(pipe, now, job_id=job_id, cid=conversation_id, person=person,
                       kind=JobKind.CONTINUE, continues=so_far)
        _touch(pipe, conversation_id, person)
        pipe.execute()
        return job

    return _start(lc, conversation_id, "continue", once)


def edit_message(lc: Lifecycle, *, conversation_id: str, turn: int, person: str, text: str,
                 tokens: int) -> Job:
    """Replace the newest message and write a new reply to it. The old reply and its
    alternatives go: they answered words that are no longer there (branch to keep them)."""
    def once(pipe: Pipeline, job_id: str) -> Job:
        now = _read_turn(lc, pipe, conversation_id, turn, person, Action.EDIT)
        edited = Message(seq=now.user.seq, role="user", text=text, tokens=tokens,
                         created_at=now.user.created_at, job_id=now.user.job_id)
        pipe.multi()
        lc.history.replace(conversation_id, edited, pipe=pipe)
        if now.reply is not None:
            lc.history.remove(conversation_id, now.reply.seq, pipe=pipe)
        alternatives.forget(pipe, conversation_id, turn)
        job = _new_job(pipe, now, job_id=job_id, cid=conversation_id, person=person, kind=JobKind.REPLY,
                       preview=text)
        _touch(pipe, conversation_id, person)
        pipe.execute()
        return job

    return _start(lc, conversation_id, "edit", once)


def choose(lc: Lifecycle, *, conversation_id: str, turn: int, person: str,
           index: int) -> Alternatives:
    """Make reply `index` of the turn the one remembered."""
    def once(pipe: Pipeline) -> Alternatives:
        now = _read_turn(lc, pipe, conversation_id, turn, person, Action.CHOOSE)
        alts = now.alternatives
        if alts is None or not 0 <= index < len(alts.replies):
            count = len(alts.replies) if alts else 1
            raise InvalidInput(f"index は 0 から {count - 1} までで指定してください。")
        chosen = Alternatives(chosen=index, replies=alts.replies)
        pipe.multi()
        alternatives.write(pipe, conversation_id, turn, chosen)
        lc.history.replace(conversation_id, chosen.current.message(seq=reply_seq(turn)),
                           pipe=pipe)
        _touch(pipe, conversation_id, person)
        pipe.execute()
        return chosen

    return run_transaction(lc.redis, once, recover=None, what=f"choose in {conversation_id}")


def _touch(pipe: Pipeline, conversation_id: str, person: str) -> None:
    touch(pipe, conversation_id, person)


def reply_writer(lc: Lifecycle, pipe: Pipeline, job: Job,
                 reply: Message) -> Callable[[Pipeline], None]:
    """Read (watched, before MULTI) what storing `job`'s reply depends on; return the writes
    to queue inside MULTI."""
    cid = job.conversation_id
    if job.kind is JobKind.REPLY:
        return lambda p: lc.history.append(cid, reply, pipe=p)
    pipe.watch(keys.conv_messages(cid), keys.conv_alternatives(cid))
    found = stored(pipe, cid, reply.seq, reply.seq)
    kept = found[0] if found else None
    alts = alternatives.read(pipe, cid, job.turn)

    def write(p: Pipeline) -> None:
        if job.kind is JobKind.REGENERATE:
            alternatives.write(p, cid, job.turn, alternatives.added(alts, stored=kept,
                                                                    new=reply))
        elif alts is not None:
            alternatives.write(p, cid, job.turn, alternatives.with_current(alts, reply))
        if kept is not None:
            lc.history.replace(cid, reply, pipe=p)
        else:
            lc.history.append(cid, reply, pipe=p)

    return write


def stored(pipe: Pipeline, cid: str, first: int, last: int) -> list[Message]:
    """Messages first..last by seq, read on a watching pipeline."""
    raws = cast(list[bytes], pipe.zrangebyscore(keys.conv_messages(cid), first, last))
    return [Message.from_json(raw) for raw in raws]


def reply_message(job: Job, generated: str, *, tokens_of: Callable[[str], int],
                  at: str | None = None) -> Message:
    """The stored reply of `job`: a continue's is the text it continued plus what it added."""
    text = job.continues + generated if job.kind is JobKind.CONTINUE else generated
    return Message(seq=reply_seq(job.turn), role="assistant", text=text, tokens=tokens_of(text),
                   created_at=at or iso(job.created_at) or "", job_id=job.id)
