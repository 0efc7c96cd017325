"""One conversation's messages: unreadable members, seqs, duplicates, gaps, orphan
replies, the turn counter and the recall index.  Repairs go through the history store
and the job store; closing a gap is `renumber.close_gaps`."""

from __future__ import annotations

import logging

from context.types import is_user_seq, turn_of, user_seq
from mysisterdb.check.findings import Finding, Kind, Run, preview
from mysisterdb.check.jobs import check_conversation_order
from mysisterdb.check.renumber import close_gaps
from mysisterdb.check.stored import ConvState, Member, load_conversation, seq_problem

logger = logging.getLogger(__name__)


def check_conversation(run: Run, cid: str) -> None:
    check_conversation_order(run, cid)
    state = load_conversation(run, cid)
    _check_members(run, state)
    if _check_duplicates(run, state):
        state = load_conversation(run, cid)
    if _check_gaps(run, state):
        state = load_conversation(run, cid)
    _check_counter(run, state)
    _check_index(run, state)


def _check_members(run: Run, state: ConvState) -> None:
    for member in state.unreadable:
        run.found(Finding(
            kind=Kind.UNREADABLE, conversation_id=state.cid,
            detail=f"seq {member.score:g}: {member.problem}; kept as is: {preview(member.raw)}"))
    for member, message in state.readable():
        problem = seq_problem(member.score, message)
        if problem:
            run.found(Finding(kind=Kind.BAD_SEQ, conversation_id=state.cid, detail=problem))


def _check_duplicates(run: Run, state: ConvState) -> bool:
    """Report seqs held by several members; True when a copy was dropped."""
    changed = False
    for seq, group in sorted(state.by_seq().items()):
        if len(group) < 2:
            continue
        finding = run.found(Finding(kind=Kind.DUPLICATE_SEQ, conversation_id=state.cid,
                                    detail=f"seq {seq} has {len(group)} members: "
                                           + ", ".join(preview(m.raw) for m in group)))
        if run.config.repair:
            dropped = _drop_copies(run, state, group)
            changed = changed or dropped > 0
            finding.repaired = len(group) - dropped == 1
            finding.detail += f"; dropped {dropped} exact copies, {len(group) - dropped} left"
    return changed


def _drop_copies(run: Run, state: ConvState, group: list[Member]) -> int:
    keeper = duplicate_keeper(group, owner=state.jobs_by_turn.get(group[0].turn))
    if keeper is None or keeper.message is None:
        return 0
    kept = (keeper.message.role, keeper.message.text)
    copies = [m.raw for m in group if m is not keeper and m.message is not None
              and (m.message.role, m.message.text) == kept]
    dropped = run.history.drop_copies(state.cid, keep=keeper.raw, copies=copies)
    if dropped:
        logger.warning("check: conversation %s seq %d: dropped %d exact copies",
                       state.cid, keeper.seq, dropped)
    return dropped


def duplicate_keeper(group: list[Member], *, owner: str | None) -> Member | None:
    """The member to keep: the turn's job's, else the first of identical members, else None."""
    readable = [m for m in group if m.message is not None]
    owned = [m for m in readable if owner is not None and m.message is not None
             and m.message.job_id == owner]
    if owned:
        return owned[0]
    same = {(m.message.role, m.message.text, m.message.job_id)
            for m in readable if m.message is not None}
    return readable[0] if len(readable) == len(group) and len(same) == 1 else None


def _check_orphans(run: Run, state: ConvState) -> None:
    stored = {m.seq for m in state.members}
    for member, message in state.readable():
        mate = user_seq(turn_of(member.seq))
        if message.role == "assistant" and not is_user_seq(member.seq) and mate not in stored:
            run.found(Finding(
                kind=Kind.ORPHAN_REPLY, conversation_id=state.cid,
                detail=f"reply seq {member.seq} (job {message.job_id}) has no user message "
                       f"{mate}; kept as is"))


def _check_gaps(run: Run, state: ConvState) -> bool:
    """Report orphan replies and gaps; True when a gap was closed (data rewritten)."""
    _check_orphans(run, state)
    missing = state.missing_turns()
    if not missing:
        return False
    turns = state.turns
    finding = run.found(Finding(kind=Kind.GAP, conversation_id=state.cid,
                                detail=f"missing turn(s) {_ranges(missing)} (stored turns "
                                       f"{turns[0]}-{turns[-1]})"))
    if run.config.repair:
        finding.repaired, outcome = close_gaps(run, state.cid)
        finding.detail += "; " + outcome
    return finding.repaired


def _check_counter(run: Run, state: ConvState) -> None:
    highest = max(state.turns, default=0)
    if state.counter >= highest:
        return
    finding = run.found(Finding(
        kind=Kind.TURN_BEHIND, conversation_id=state.cid,
        detail=f"turn counter {state.counter} is below the highest stored turn "
               f"{highest}: the next message would land on a stored turn"))
    if run.config.repair:
        run.jobs.raise_turn_counter(state.cid, highest)
        finding.repaired = True
        finding.detail += f"; raised to {highest}"


def _check_index(run: Run, state: ConvState) -> None:
    report = run.history.check_index(state.cid)
    if report.ok:
        return
    examples = ", ".join(f"{term!r}->{seq}" for term, seq in report.dangling_examples[:3])
    finding = run.found(Finding(
        kind=Kind.INDEX, conversation_id=state.cid,
        detail=f"{report.dangling} dangling postings ({examples or '-'}), "
               f"{report.duplicates} duplicate postings, {report.unindexed} not indexed"))
    if not run.config.repair:
        return
    if state.unreadable:
        finding.detail += "; not rebuilt: unreadable members would stop the rebuild"
        return
    count = run.history.rebuild_index(state.cid)
    finding.repaired = run.history.check_index(state.cid).ok
    finding.detail += f"; rebuilt from {count} messages"


def _ranges(turns: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    parts: list[str] = []
    start = prev = turns[0]
    for turn in [*turns[1:], None]:
        if turn is not None and turn == prev + 1:
            prev = turn
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if turn is not None:
            start = prev = turn
    return ", ".join(parts)
