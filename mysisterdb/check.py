"""`mysisterdb check`: verify the stored data; with `--repair`, fix what is safe to fix.

Every finding is a problem (exit 1) unless it was repaired; `--repair` never deletes a
user's message.  Jobs are checked first, so that a conversation held by a dead job can be
repaired in the same run.

Jobs (every `msdb:job:*` record and every id in `msdb:jobs:active`)
    stale_job     in_progress longer than hard limit + grace since it started (the hard
                  limit would have killed it: its worker is gone), or queued longer than
                  the queue timeout (MYSISTERDB_QUEUE_TIMEOUT_S; without it,
                  QUEUED_LIMIT_FACTOR x hard limit).  A queued job may legitimately wait
                  behind its conversation's earlier turns and behind the queue, so that
                  bound is generous (the same bound the runtime reapers use).
                  Repair: failed/worker_lost (started) or failed/expired (never started)
                  through the lifecycle's reaper (incident recorded, turn handed over).
    active_set    a job index out of step with the job records: the active set, the
                  running set or a conversation's order set lists an ended or vanished
                  job, or misses a live one.  Repair: add / remove (the indexes follow
                  the records, which are the truth).
    bad_job       a job record that does not parse.  Reported only.

Conversations (every id in `msdb:conversations`); turn t = user seq 2t-1, reply seq 2t
    unreadable    a member that is not a Message (bad JSON, missing field, no token count
                  or a negative one).  Reported only, never deleted or rewritten: it may be
                  the only copy of what the user wrote.  It also blocks the repairs that
                  rewrite the conversation (renumbering, index rebuild), which need every
                  message understood.
    bad_seq       a member whose seq differs from its score, or a user message at an even
                  seq / a reply at an odd one.  Reported only.
    duplicate_seq two members at one seq.  Repair: keep the one whose job_id is the turn's
                  job in `msdb:conv:{cid}:jobs` (or, with no such owner, the first of
                  members that are all the same message) and drop only members that are
                  exact copies of it (same role and text): the same message twice.
                  Members that differ are all kept and stay reported.
    gap           a turn with no message between the first and the last stored turn.
                  Not gaps: a user message without its reply (a failed or cancelled job
                  has no reply, a running one has none yet); turns before the first
                  stored turn (a reset deletes the history but keeps the turn counter);
                  a turn counter ahead of the stored turns (a reset, or a submit that died
                  between INCR and storing its message).
    orphan_reply  a reply whose user message is missing.  Reported only: the user's text
                  cannot be recreated and dropping the reply would lose data.
    turn_behind   `msdb:conv:{cid}:turn` below the highest stored turn: the next submit
                  would get a stored turn, and its message would be ignored as a repeat.
                  Repair: raise the counter (atomically, never lowering it).
    index         `check_index` found dangling or duplicate postings.  Repair:
                  `rebuild_index` (not with unreadable members: it would stop on them).

Repair of a gap: renumber, never delete
    Later turns move down so that the stored turns become contiguous from the first
    one: every member is rewritten with its new seq (all its other fields kept), the
    turn -> job map and each moved job's `turn` follow, the turn counter moves down by
    the number of turns closed (never below the new last turn), the summary's
    covers_up_to_seq follows its message, and the index is rebuilt.  Nothing is deleted;
    job ids of the vanished turns drop out of the turn -> job map (their records stay
    until their TTL).  The seqs the history API shows change, hence the care:
    renumbering runs only on an idle conversation - no queued or running job, no summary
    task pending, nothing created in the last `quiet_s` (hard limit + grace: a submit
    that INCRed its turn but has not stored its message yet must not find its seq
    taken), no unreadable, misnumbered or duplicate member - and inside WATCH on the
    conversation's messages, counter, job map and summary, so a write racing the repair
    aborts it (reported; run check again).  Otherwise the gap is reported, not repaired.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TextIO

from redis import Redis, RedisError, WatchError

from context.redis_store import RedisHistoryStore
from context.types import Message
from mysisterdb import keys
from mysisterdb.history import history_store
from mysisterdb.jobs import JobStore, Mutation
from mysisterdb.lifecycle import Lifecycle, Limits
from mysisterdb.models import Job, JobStatus, iso, utcnow

logger = logging.getLogger(__name__)

QUEUED_LIMIT_FACTOR = 10
REPAIR_ACTION = "marked failed by mysisterdb check --repair"
BATCH = 500
PREVIEW_CHARS = 40
EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNCHECKED = 0, 1, 2

# Raise the turn counter, never lower it: a submit may INCR it while we look.
_RAISE_COUNTER_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class Kind(StrEnum):
    STALE_JOB = "stale_job"
    ACTIVE_SET = "active_set"
    BAD_JOB = "bad_job"
    UNREADABLE = "unreadable"
    BAD_SEQ = "bad_seq"
    DUPLICATE_SEQ = "duplicate_seq"
    GAP = "gap"
    ORPHAN_REPLY = "orphan_reply"
    TURN_BEHIND = "turn_behind"
    INDEX = "index"


@dataclass
class Finding:
    """One problem found; `repaired` once --repair fixed it."""

    kind: str
    detail: str
    conversation_id: str | None = None
    job_id: str | None = None
    repaired: bool = False

    def line(self) -> str:
        where = " ".join(part for part in (
            f"conv={self.conversation_id}" if self.conversation_id else "",
            f"job={self.job_id}" if self.job_id else "") if part)
        status = "REPAIRED" if self.repaired else "PROBLEM "
        return f"{status} {self.kind:<13} {where}: {self.detail}"


@dataclass(frozen=True)
class CheckConfig:
    repair: bool
    hard_limit_s: float
    grace_s: float = 2.0
    queued_limit_s: float | None = None  # None: QUEUED_LIMIT_FACTOR x hard limit
    quiet_s: float | None = None  # None: hard limit + grace

    @property
    def running_limit(self) -> timedelta:
        return timedelta(seconds=self.hard_limit_s + self.grace_s)

    @property
    def queued_limit(self) -> timedelta:
        bound = self.queued_limit_s
        return timedelta(seconds=QUEUED_LIMIT_FACTOR * self.hard_limit_s if bound is None
                         else bound)

    @property
    def quiet(self) -> timedelta:
        return self.running_limit if self.quiet_s is None else timedelta(seconds=self.quiet_s)


@dataclass
class _Run:
    redis: Redis
    config: CheckConfig
    jobs: JobStore
    history: RedisHistoryStore
    lifecycle: Lifecycle
    findings: list[Finding] = field(default_factory=list)
    live_jobs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    jobs_checked: int = 0
    conversations_checked: int = 0


# -- entry points ---------------------------------------------------------------------------


def run_check(*, redis: Redis, repair: bool, hard_limit_s: float, out: TextIO,
              queue_timeout_s: float | None = None) -> int:
    """Check (and with `repair`, fix) the stored data; print a report.

    Returns 0 when clean or everything found was repaired, 1 when problems remain,
    2 when Redis failed before the check could finish.
    """
    run = _new_run(redis, CheckConfig(repair=repair, hard_limit_s=hard_limit_s,
                                      queued_limit_s=queue_timeout_s))
    try:
        check_all(run)
    except RedisError as exc:
        _print_report(run, out=out)
        print(f"check: stopped, Redis failed: {type(exc).__name__}: {exc}", file=out)
        return EXIT_UNCHECKED
    _print_report(run, out=out)
    return EXIT_PROBLEMS if any(not f.repaired for f in run.findings) else EXIT_CLEAN


def find_problems(*, redis: Redis, config: CheckConfig) -> list[Finding]:
    """The findings alone (tests, callers that print their own report)."""
    run = _new_run(redis, config)
    check_all(run)
    return run.findings


def _new_run(client: Redis, config: CheckConfig) -> _Run:
    history = history_store(client)
    # The same dead-job rules as the sweep; no publishing: the sweep sends a hand-over.
    lifecycle = Lifecycle(client=client, history=history, publish=None, limits=Limits(
        hard_limit_s=config.hard_limit_s, grace_s=config.grace_s,
        queue_timeout_s=config.queued_limit.total_seconds()))
    return _Run(redis=client, config=config, jobs=lifecycle.jobs, history=history,
                lifecycle=lifecycle)


def check_all(run: _Run) -> None:
    check_jobs(run)
    for cid in sorted(_text(c) for c in run.redis.sscan_iter(keys.conversations(), count=1000)):
        check_conversation(run, cid)
        run.conversations_checked += 1


def _print_report(run: _Run, *, out: TextIO) -> None:
    for finding in run.findings:
        print(finding.line(), file=out)
    repaired = sum(f.repaired for f in run.findings)
    hint = " (run with --repair to fix what is safe to fix)" if (
        not run.config.repair and run.findings) else ""
    print(f"check: {len(run.findings)} problems, {repaired} repaired{hint} "
          f"[{run.conversations_checked} conversations, {run.jobs_checked} jobs]", file=out)


# -- jobs -----------------------------------------------------------------------------------


def check_jobs(run: _Run) -> None:
    listed = set(run.jobs.active_ids()) | set(run.jobs.running_ids())
    seen: set[str] = set()
    for job_id, raw in _job_records(run.redis):
        seen.add(job_id)
        run.jobs_checked += 1
        job = _parse_job(run, job_id, raw)
        if job is not None:
            _check_job(run, job, listed=job_id in listed)
    for job_id in sorted(listed - seen):
        _unlist(run, job_id, why="its record expired or was deleted")


def _job_records(client: Redis) -> Iterator[tuple[str, bytes | None]]:
    prefix = len(keys.job(""))
    batch: list[Any] = []
    for key in client.scan_iter(match=keys.job_pattern(), count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            yield from _fetch_jobs(client, batch, prefix=prefix)
            batch = []
    if batch:
        yield from _fetch_jobs(client, batch, prefix=prefix)


def _fetch_jobs(client: Redis, batch: list[Any], *, prefix: int) -> list[tuple[str, bytes | None]]:
    values: list[Any] = list(client.mget(batch))
    return [(_text(key)[prefix:], raw) for key, raw in zip(batch, values, strict=True)]


def _parse_job(run: _Run, job_id: str, raw: bytes | None) -> Job | None:
    if raw is None:  # expired between SCAN and MGET
        return None
    try:
        return Job.model_validate_json(raw)
    except ValueError as exc:
        run.findings.append(Finding(kind=Kind.BAD_JOB, job_id=job_id,
                                    detail=f"record does not parse: {str(exc)[:200]}"))
        return None


def _check_job(run: _Run, job: Job, *, listed: bool) -> None:
    _check_job_indexes(run, job)
    if job.status.is_final:
        return
    reason = stale_reason(run.config, job)
    if reason is not None and _stale_job(run, job, reason):
        return
    run.live_jobs[job.conversation_id].add(job.id)


def stale_reason(config: CheckConfig, job: Job, *, now: datetime | None = None) -> str | None:
    """Why a queued or running job is surely dead, or None."""
    now = now or utcnow()
    if job.status is JobStatus.IN_PROGRESS:
        since, limit, what = job.started_at or job.created_at, config.running_limit, "running"
    elif job.status is JobStatus.QUEUED:
        since, limit, what = job.created_at, config.queued_limit, "queued"
    else:
        return None
    age = now - since
    if age <= limit:
        return None
    return (f"{what} since {iso(since)} ({age.total_seconds():.0f} s; limit "
            f"{limit.total_seconds():g} s, hard limit {config.hard_limit_s:g} s)")


def _stale_job(run: _Run, job: Job, reason: str) -> bool:
    """Report (and repair) a dead job; True when it is no longer live."""
    finding = Finding(kind=Kind.STALE_JOB, detail=reason, conversation_id=job.conversation_id,
                      job_id=job.id)
    run.findings.append(finding)
    if not run.config.repair:
        return False
    current = run.jobs.find(job.id)
    if current is None or current.status.is_final:
        finding.repaired, finding.detail = True, finding.detail + "; it ended meanwhile"
        return True
    ended = run.lifecycle.reap(current, by="mysisterdb check --repair")
    if not ended.status.is_final:
        finding.detail += "; it moved on before the repair, left alone"
        return False
    finding.repaired = True
    code = ended.error.code.value if ended.error else "-"
    finding.detail += f"; marked {ended.status.value}/{code}"
    logger.warning("check: job %s marked %s/%s (%s)", job.id, ended.status.value, code, reason)
    return True


def _unlist(run: _Run, job_id: str, *, why: str) -> None:
    """A job without a live record listed in the global job sets."""
    for key in (keys.active_jobs(), keys.running_jobs()):
        # The snapshot may be older than the record: ask again before reporting.
        if job_id not in run.jobs.index_members(key):
            continue
        finding = Finding(kind=Kind.ACTIVE_SET, job_id=job_id, detail=f"listed in {key} but {why}")
        run.findings.append(finding)
        if run.config.repair:
            run.jobs.fix_index(key, add={}, remove={job_id})
            finding.repaired = True


@dataclass(frozen=True)
class _Index:
    """One index that follows a job's status: whether the job belongs in it, and how to
    add or remove it."""

    key: str
    member: Callable[[Job], bool]
    score: Callable[[Job], float]

    def present(self, client: Redis, job: Job) -> bool:
        return client.zscore(self.key, job.id) is not None

    def repair(self, jobs: JobStore, job: Job) -> None:
        if self.member(job):
            jobs.fix_index(self.key, add={job.id: self.score(job)}, remove=set())
        else:
            jobs.fix_index(self.key, add={}, remove={job.id})


def _job_indexes(job: Job) -> list[_Index]:
    def started(j: Job) -> float:
        return (j.started_at or j.created_at).timestamp()

    return [_Index(keys.active_jobs(), lambda j: not j.status.is_final,
                   lambda j: j.created_at.timestamp()),
            _Index(keys.running_jobs(), lambda j: j.status is JobStatus.IN_PROGRESS, started),
            _Index(keys.conv_active(job.conversation_id), lambda j: not j.status.is_final,
                   lambda j: float(j.turn))]


def _check_job_indexes(run: _Run, job: Job) -> None:
    for index in _job_indexes(job):
        if index.present(run.redis, job) == index.member(job):
            continue
        current = run.jobs.find(job.id)  # it may have moved on since our read
        if current is not None and index.present(run.redis, current) == index.member(current):
            continue
        wanted = current is not None and index.member(current)
        finding = Finding(kind=Kind.ACTIVE_SET, job_id=job.id,
                          conversation_id=job.conversation_id,
                          detail=f"{'missing from' if wanted else 'still listed in'} "
                                 f"{index.key} ({(current or job).status.value})")
        run.findings.append(finding)
        if run.config.repair:
            index.repair(run.jobs, current or job)
            finding.repaired = True


def _check_conversation_order(run: _Run, cid: str) -> None:
    """Entries of the conversation's order set whose job record is gone."""
    key = keys.conv_active(cid)
    members: list[Any] = list(run.redis.zrange(key, 0, -1))
    for raw in members:
        job_id = _text(raw)
        if run.jobs.find(job_id) is not None:
            continue  # a live or final record: _check_job_indexes judged it
        finding = Finding(kind=Kind.ACTIVE_SET, job_id=job_id, conversation_id=cid,
                          detail=f"listed in {key} but its record expired or was deleted")
        run.findings.append(finding)
        if run.config.repair:
            run.jobs.fix_index(key, add={}, remove={job_id})
            finding.repaired = True


# -- one conversation: what is stored ---------------------------------------------------


@dataclass
class Member:
    """One zset member: its raw bytes, its score, and the message if it is readable."""

    raw: bytes
    score: float
    message: Message | None
    problem: str = ""

    @property
    def seq(self) -> int:
        return int(self.score)

    @property
    def turn(self) -> int:
        return (self.seq + 1) // 2


@dataclass
class ConvState:
    cid: str
    members: list[Member]
    counter: int
    jobs_by_turn: dict[int, str]
    summary_seq: int | None

    @property
    def unreadable(self) -> list[Member]:
        return [m for m in self.members if m.message is None]

    def readable(self) -> list[tuple[Member, Message]]:
        return [(m, m.message) for m in self.members if m.message is not None]

    def by_seq(self) -> dict[int, list[Member]]:
        grouped: dict[int, list[Member]] = defaultdict(list)
        for member in self.members:
            grouped[member.seq].append(member)
        return grouped

    @property
    def turns(self) -> list[int]:
        return sorted({m.turn for m in self.members})

    def missing_turns(self) -> list[int]:
        turns = self.turns
        if not turns:
            return []
        present = set(turns)
        return [t for t in range(turns[0], turns[-1] + 1) if t not in present]


def load_conversation(client: Redis, cid: str) -> ConvState:
    """Everything check needs of one conversation (works on a WATCHing pipeline too)."""
    members = [Member(raw, score, *read_member(raw)) for raw, score in _members(client, cid)]
    counter = client.get(keys.conv_turn(cid))
    summary_seq = client.hget(keys.conv_summary(cid), "covers_up_to_seq")
    return ConvState(cid=cid, members=members, counter=int(counter or 0),
                     jobs_by_turn=_jobs_by_turn(client.hgetall(keys.conv_jobs(cid))),
                     summary_seq=None if summary_seq is None else int(summary_seq))


def _members(client: Redis, cid: str) -> Iterator[tuple[bytes, float]]:
    key, start, size = keys.conv_messages(cid), 0, BATCH * 4
    while True:
        batch: list[Any] = list(client.zrange(key, start, start + size - 1, withscores=True))
        yield from batch
        if len(batch) < size:
            return
        start += len(batch)


def _jobs_by_turn(raw: dict[Any, Any]) -> dict[int, str]:
    found: dict[int, str] = {}
    for turn, job_id in raw.items():
        if _text(turn).isdigit():  # a foreign field is not ours to judge
            found[int(turn)] = _text(job_id)
    return found


def read_member(raw: bytes) -> tuple[Message | None, str]:
    """The message, or None and why it cannot be read."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # bad JSON or bad UTF-8
        return None, f"not JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    tokens = data.get("tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return None, f"no valid token count (tokens={tokens!r})"
    try:
        return Message.from_json(raw), ""
    except (KeyError, ValueError, TypeError) as exc:
        return None, f"not a message ({type(exc).__name__}: {exc})"


# -- one conversation: the checks ---------------------------------------------------------


def check_conversation(run: _Run, cid: str) -> None:
    _check_conversation_order(run, cid)
    state = load_conversation(run.redis, cid)
    _check_members(run, state)
    if _check_duplicates(run, state):
        state = load_conversation(run.redis, cid)
    rebuilt = _check_gaps(run, state)
    if rebuilt:
        state = load_conversation(run.redis, cid)
    _check_counter(run, state)
    _check_index(run, state)


def _check_members(run: _Run, state: ConvState) -> None:
    for member in state.unreadable:
        run.findings.append(Finding(
            kind=Kind.UNREADABLE, conversation_id=state.cid,
            detail=f"seq {member.score:g}: {member.problem}; kept as is: {_preview(member.raw)}"))
    for member, message in state.readable():
        problem = seq_problem(member.score, message)
        if problem:
            run.findings.append(Finding(kind=Kind.BAD_SEQ, conversation_id=state.cid,
                                        detail=problem))


def seq_problem(score: float, message: Message) -> str | None:
    if score != int(score) or message.seq != int(score):
        return f"member says seq {message.seq} but is stored at score {score:g}"
    if message.seq < 1:
        return f"seq {message.seq} is below 1"
    if (message.role == "user") != (message.seq % 2 == 1):
        return f"{message.role} message at seq {message.seq} (user: odd 2t-1, reply: even 2t)"
    return None


def _check_duplicates(run: _Run, state: ConvState) -> bool:
    """Report seqs held by several members; True when a copy was dropped."""
    changed = False
    for seq, group in sorted(state.by_seq().items()):
        if len(group) < 2:
            continue
        finding = Finding(kind=Kind.DUPLICATE_SEQ, conversation_id=state.cid,
                          detail=f"seq {seq} has {len(group)} members: "
                                 + ", ".join(_preview(m.raw) for m in group))
        run.findings.append(finding)
        if run.config.repair:
            dropped = _drop_copies(run.redis, state, group)
            changed = changed or dropped > 0
            finding.repaired = len(group) - dropped == 1
            finding.detail += f"; dropped {dropped} exact copies, {len(group) - dropped} left"
    return changed


def _drop_copies(client: Redis, state: ConvState, group: list[Member]) -> int:
    keeper = duplicate_keeper(group, owner=state.jobs_by_turn.get(group[0].turn))
    if keeper is None or keeper.message is None:
        return 0
    kept = (keeper.message.role, keeper.message.text)
    copies = [m for m in group if m is not keeper and m.message is not None
              and (m.message.role, m.message.text) == kept]
    dropped = sum(int(client.zrem(keys.conv_messages(state.cid), m.raw)) for m in copies)
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


def _check_gaps(run: _Run, state: ConvState) -> bool:
    """Report orphan replies and gaps; True when a gap was closed (data rewritten)."""
    stored = {m.seq for m in state.members}
    for member, message in state.readable():
        if message.role == "assistant" and member.seq % 2 == 0 and member.seq - 1 not in stored:
            run.findings.append(Finding(
                kind=Kind.ORPHAN_REPLY, conversation_id=state.cid,
                detail=f"reply seq {member.seq} (job {message.job_id}) has no user message "
                       f"{member.seq - 1}; kept as is"))
    missing = state.missing_turns()
    if not missing:
        return False
    turns = state.turns
    finding = Finding(kind=Kind.GAP, conversation_id=state.cid,
                      detail=f"missing turn(s) {_ranges(missing)} (stored turns "
                             f"{turns[0]}-{turns[-1]})")
    run.findings.append(finding)
    if run.config.repair:
        finding.repaired, outcome = close_gaps(run, state.cid)
        finding.detail += "; " + outcome
    return finding.repaired


def _check_counter(run: _Run, state: ConvState) -> None:
    highest = max(state.turns, default=0)
    if state.counter >= highest:
        return
    finding = Finding(kind=Kind.TURN_BEHIND, conversation_id=state.cid,
                      detail=f"turn counter {state.counter} is below the highest stored turn "
                             f"{highest}: the next message would land on a stored turn")
    run.findings.append(finding)
    if run.config.repair:
        run.redis.eval(_RAISE_COUNTER_LUA, 1, keys.conv_turn(state.cid), highest)
        finding.repaired = True
        finding.detail += f"; raised to {highest}"


def _check_index(run: _Run, state: ConvState) -> None:
    report = run.history.check_index(state.cid)
    if report.ok:
        return
    examples = ", ".join(f"{term!r}->{seq}" for term, seq in report.dangling_examples[:3])
    finding = Finding(kind=Kind.INDEX, conversation_id=state.cid,
                      detail=f"{report.dangling} dangling postings ({examples or '-'}), "
                             f"{report.duplicates} duplicate postings, {report.unindexed} not indexed")
    run.findings.append(finding)
    if not run.config.repair:
        return
    if state.unreadable:
        finding.detail += "; not rebuilt: unreadable members would stop the rebuild"
        return
    count = run.history.rebuild_index(state.cid)
    finding.repaired = run.history.check_index(state.cid).ok
    finding.detail += f"; rebuilt from {count} messages"


# -- closing gaps -----------------------------------------------------------------------------


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
        """Where `seq` lands; a seq of a vanished turn lands at the end of the turn before."""
        turn = (seq + 1) // 2
        new = self.turn(turn)
        if new is not None:
            return seq - 2 * (turn - new)
        return 2 * self.new[max(t for t in self.new if t < turn)]


def close_gaps(run: _Run, cid: str) -> tuple[bool, str]:
    """Renumber an idle conversation so its turns are contiguous; (done, what happened)."""
    watched = (keys.conv_messages(cid), keys.conv_turn(cid), keys.conv_jobs(cid),
               keys.conv_summary(cid))
    with run.redis.pipeline() as pipe:
        try:
            pipe.watch(*watched)
            state = load_conversation(pipe, cid)
            blocker = renumber_blocker(run, pipe, state)
            if blocker is not None:
                return False, f"not renumbered: {blocker}"
            plan = Renumber.closing(state.turns)
            pipe.multi()
            retag, vanished = _write_renumbered(pipe, state, plan)
            pipe.execute()
        except WatchError:
            return False, "not renumbered: the conversation changed meanwhile; run check again"
    for job_id, turn in retag.items():
        run.jobs.update(job_id, _set_turn(turn), only_active=False)
    run.history.rebuild_index(cid)
    logger.warning("check: conversation %s renumbered to close %d turns", cid, plan.shift)
    return True, (f"renumbered: turns {plan.first}-{plan.last} are now {plan.first}-"
                  f"{plan.new[plan.last]}, counter {_counter_after(state, plan)}, index rebuilt"
                  + (f"; jobs of vanished turns unmapped: {', '.join(vanished)}" if vanished
                     else ""))


def renumber_blocker(run: _Run, client: Redis, state: ConvState) -> str | None:
    """Why renumbering this conversation is not safe now, or None."""
    if state.unreadable:
        return "it has unreadable members"
    if any(seq_problem(m.score, msg) for m, msg in state.readable()):
        return "it has misnumbered members"
    if any(len(group) > 1 for group in state.by_seq().values()):
        return "it has duplicate seqs"
    jobs, unparseable = _conversation_jobs(client, state)
    if unparseable:  # it might be a live job: do not guess
        return f"job record {unparseable[0]} does not parse"
    live = sorted({j.id for j in jobs if not j.status.is_final} | run.live_jobs[state.cid])
    if live:
        return f"job {live[0]} is queued or running"
    if client.exists(keys.conv_summarizing(state.cid)):
        return "a summary task is queued or running"
    latest = max(_activity_times(state, jobs), default=None)
    if latest is not None and utcnow() - latest < run.config.quiet:
        return (f"last activity at {iso(latest)}, less than "
                f"{run.config.quiet.total_seconds():g} s ago")
    return None


def _conversation_jobs(client: Redis, state: ConvState) -> tuple[list[Job], list[str]]:
    """The conversation's job records (expired ones are gone), and ids that do not parse."""
    ids = sorted(set(state.jobs_by_turn.values()))
    found: list[Job] = []
    unparseable: list[str] = []
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        for job_id, raw in zip(chunk, client.mget([keys.job(i) for i in chunk]), strict=True):
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


def _write_renumbered(pipe: Any, state: ConvState, plan: Renumber) -> tuple[dict[str, int],
                                                                           list[str]]:
    """Queue the renumbering in a MULTI; (job id -> new turn, job ids of vanished turns)."""
    key = keys.conv_messages(state.cid)
    moved = [(m, plan.seq(m.seq)) for m in state.members if plan.seq(m.seq) != m.seq]
    for member, _ in moved:
        pipe.zrem(key, member.raw)
    for member, seq in moved:
        pipe.zadd(key, {with_seq(member.raw, seq): seq})
    retag, vanished = _remap_jobs(pipe, state, plan)
    pipe.set(keys.conv_turn(state.cid), _counter_after(state, plan))
    if state.summary_seq is not None and plan.seq(state.summary_seq) != state.summary_seq:
        # Direct HSET: set_summary refuses to go backwards, which is right for workers only.
        pipe.hset(keys.conv_summary(state.cid), "covers_up_to_seq", plan.seq(state.summary_seq))
    return retag, vanished


def _remap_jobs(pipe: Any, state: ConvState, plan: Renumber) -> tuple[dict[str, int],
                                                                     list[str]]:
    moves = {t: plan.turn(t) for t in state.jobs_by_turn if plan.turn(t) != t}
    if not moves:
        return {}, []
    pipe.hdel(keys.conv_jobs(state.cid), *(str(t) for t in moves))
    retag = {state.jobs_by_turn[t]: new for t, new in moves.items() if new is not None}
    if retag:
        pipe.hset(keys.conv_jobs(state.cid),
                  mapping={str(new): job_id for job_id, new in retag.items()})
    return retag, [state.jobs_by_turn[t] for t, new in moves.items() if new is None]


def _counter_after(state: ConvState, plan: Renumber) -> int:
    return max(plan.new[plan.last], state.counter - plan.shift)


def with_seq(raw: bytes, seq: int) -> str:
    """The member with a new seq and every other field as it was."""
    data = json.loads(raw)
    data["seq"] = seq
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _set_turn(turn: int) -> Mutation:
    def mutate(job: Job) -> None:
        job.turn = turn

    return mutate


# -- small helpers -------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…")


def _parse_time(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


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
