"""Closing gaps: renumber an idle conversation so its stored turns are contiguous.

The messages and the summary are rewritten by the history store (`renumber`), the turn
map and counter by the job store (`remap_turns`), in one MULTI under WATCH of the keys
both stores name; a write racing the repair aborts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis, WatchError
from redis.client import Pipeline

from context.types import is_user_seq, reply_seq, turn_of, user_seq
from core import keys
from core.models import Job, iso, utcnow
from mysisterdb.check.findings import Run
from mysisterdb.check.stored import ConvState, load_conversation, seq_problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Renumber:
    """Closing every gap: stored turns keep their order and become contiguous from the first."""

    new: dict[int, int]  # stored turn -> its number afterwards
    first: int
    last: int

    @classmethod
    def closing(cls, turns: Iterable[int]) -> Renumber:
        ordered = sorted(set(turns))
        return cls(new={t: ordered[0] + i for i, t in enumerate(ordered)},
                   first=ordered[0], last=ordered[-1])

    @property
    def shift(self) -> int:
        """How far turns after the last stored one move down (the number of turns closed)."""
        return self.last - self.new[self.last]

    def turn(self, turn: int) -> int | None:
        """The new number of `turn`; None for a vanished turn (the next stored turn takes it)."""
        if turn < self.first:
            return turn
        if turn > self.last:
            return turn - self.shift
        return self.new.get(turn)

    def seq(self, seq: int) -> int:
        """Where `seq` lands: the same place in its turn's new number; a seq of a vanished
        turn lands at the end (the reply) of the stored turn before."""
        turn = turn_of(seq)
        new = self.turn(turn)
        if new is None:
            return reply_seq(self.new[max(t for t in self.new if t < turn)])
        return user_seq(new) if is_user_seq(seq) else reply_seq(new)

    def counter_after(self, counter: int) -> int:
        return max(self.new[self.last], counter - self.shift)


@dataclass(frozen=True)
class _Done:
    plan: Renumber
    counter: int
    retag: dict[str, int]  # job id -> its new turn
    vanished: list[str]  # job ids of turns that vanished


def close_gaps(run: Run, cid: str) -> tuple[bool, str]:
    """Renumber an idle conversation so its turns are contiguous; (done, what happened)."""
    with run.redis.pipeline() as pipe:
        try:
            pipe.watch(*run.history.watched_keys(cid), *run.jobs.turn_keys(cid))
            state = load_conversation(run, cid, client=pipe)
            blocker = renumber_blocker(run, pipe, state)
            if blocker is not None:
                return False, f"not renumbered: {blocker}"
            pipe.multi()
            done = _write_renumbered(run, pipe, state)
            pipe.execute()
        except WatchError:
            return False, "not renumbered: the conversation changed meanwhile; run check again"
    for job_id, turn in done.retag.items():
        run.jobs.set_turn(job_id, turn)
    run.history.rebuild_index(cid)
    logger.warning("check: conversation %s renumbered to close %d turns", cid, done.plan.shift)
    return True, _outcome(done)


def _outcome(done: _Done) -> str:
    plan = done.plan
    return (f"renumbered: turns {plan.first}-{plan.last} are now {plan.first}-"
            f"{plan.new[plan.last]}, counter {done.counter}, index rebuilt"
            + (f"; jobs of vanished turns unmapped: {', '.join(done.vanished)}"
               if done.vanished else ""))


def renumber_blocker(run: Run, client: Redis, state: ConvState) -> str | None:
    """Why renumbering this conversation is not safe now, or None."""
    if state.unreadable:
        return "it has unreadable members"
    if any(seq_problem(m.score, msg) for m, msg in state.readable()):
        return "it has misnumbered members"
    if any(len(group) > 1 for group in state.by_seq().values()):
        return "it has duplicate seqs"
    jobs, unparseable = _conversation_jobs(run, client, state)
    if unparseable:  # it might be a live job: do not guess
        return f"job record {unparseable[0]} does not parse"
    live = sorted({j.id for j in jobs if not j.status.is_final} | run.live_jobs[state.cid])
    if live:
        return f"job {live[0]} is queued or running"
    if client.exists(keys.conv_summarizing(state.cid)):
        return "a summary task is queued or running"
    if client.exists(keys.conv_embedding(state.cid)):
        return "an embedding task is queued or running"
    latest = max(_activity_times(state, jobs), default=None)
    if latest is not None and utcnow() - latest < run.config.quiet:
        return (f"last activity at {iso(latest)}, less than "
                f"{run.config.quiet.total_seconds():g} s ago")
    return None


def _conversation_jobs(run: Run, client: Redis, state: ConvState) -> tuple[list[Job], list[str]]:
    """The conversation's job records (expired ones are gone), and ids that do not parse."""
    found: list[Job] = []
    unparseable: list[str] = []
    ids = sorted(set(state.jobs_by_turn.values()))
    for job_id, raw in run.jobs.raw_records(ids, client=client):
        try:
            found += [Job.model_validate_json(raw)] if raw else []
        except ValueError:
            unparseable.append(job_id)
    return found, unparseable


def _activity_times(state: ConvState, jobs: list[Job]) -> Iterator[datetime]:
    yield from (j.created_at for j in jobs)
    for _, message in state.readable():
        when = _parse_time(message.created_at)
        if when is not None:
            yield when


def _write_renumbered(run: Run, pipe: Pipeline, state: ConvState) -> _Done:
    """Queue the renumbering in the MULTI: messages and summary, turn map and counter."""
    plan = Renumber.closing(state.turns)
    moves = [(m.raw, plan.seq(m.seq)) for m in state.members if plan.seq(m.seq) != m.seq]
    summary = state.summary_seq
    covers = None if summary is None else plan.seq(summary)
    run.history.renumber(state.cid, moves, pipe=pipe,
                         covers_up_to_seq=None if covers == summary else covers)
    turn_moves = {t: plan.turn(t) for t in state.jobs_by_turn if plan.turn(t) != t}
    retag = {state.jobs_by_turn[t]: new for t, new in turn_moves.items() if new is not None}
    counter = plan.counter_after(state.counter)
    run.jobs.remap_turns(pipe, state.cid, unmap=turn_moves,
                         mapping={new: job_id for job_id, new in retag.items()}, counter=counter)
    return _Done(plan=plan, counter=counter, retag=retag,
                 vanished=[state.jobs_by_turn[t] for t, new in turn_moves.items() if new is None])


def _parse_time(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
