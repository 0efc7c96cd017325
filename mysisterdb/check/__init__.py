"""`mysisterdb check`: verify the stored data; with `--repair`, fix what is safe to fix.

Every finding is a problem (exit 1) unless it was repaired; `--repair` never deletes a
user's message.  Jobs are checked first, so that a conversation held by a dead job can be
repaired in the same run.

Where each part lives (`mysisterdb/check/`): `findings.py` (Kind, Finding, CheckConfig,
the run), `jobs.py` (job records and their indexes), `stored.py` (one conversation as
stored, the seq rule), `conversations.py` (the message checks below), `renumber.py`
(closing gaps).  check owns no key: it reads and repairs through `JobStore`, the history
store (`context/redis_store.py`) and the lifecycle; the seq <-> turn rule is
`context/types.py` (`user_seq`, `reply_seq`, `turn_of`, `is_user_seq`).

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
                  exact copies of it (same role and text): the same message twice,
                  and only while the kept one is still stored (one script).
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

from typing import TextIO

from redis import Redis, RedisError

from core import keys
from core.history import history_store
from core.lifecycle import Lifecycle, Limits
from core.redis_client import to_str
from mysisterdb.check.conversations import check_conversation
from mysisterdb.check.findings import CheckConfig, Finding, Kind, Run
from mysisterdb.check.jobs import check_jobs
from mysisterdb.check.renumber import Renumber

__all__ = ["CheckConfig", "Finding", "Kind", "Renumber", "find_problems", "run_check"]

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNCHECKED = 0, 1, 2


def run_check(*, redis: Redis, repair: bool, hard_limit_s: float, out: TextIO,
              queue_timeout_s: float | None = None) -> int:
    """Check (and with `repair`, fix) the stored data; print a report.

    Returns 0 when clean or everything found was repaired, 1 when problems remain,
    2 when Redis failed before the check could finish.
    """
    run = new_run(redis, CheckConfig(repair=repair, hard_limit_s=hard_limit_s,
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
    run = new_run(redis, config)
    check_all(run)
    return run.findings


def new_run(client: Redis, config: CheckConfig) -> Run:
    history = history_store(client)
    # The same dead-job rules as the sweep; no publishing: the sweep sends a hand-over.
    lifecycle = Lifecycle(client=client, history=history, broker=None, limits=Limits(
        hard_limit_s=config.hard_limit_s, grace_s=config.grace_s,
        queue_timeout_s=config.queued_limit.total_seconds()))
    return Run(redis=client, config=config, jobs=lifecycle.jobs, history=history,
               lifecycle=lifecycle)


def check_all(run: Run) -> None:
    """Jobs first, so that a conversation held by a dead job is repaired in the same run."""
    check_jobs(run)
    for cid in sorted(to_str(c) for c in run.redis.sscan_iter(keys.conversations(), count=1000)):
        check_conversation(run, cid)
        run.conversations_checked += 1


def _print_report(run: Run, *, out: TextIO) -> None:
    for finding in run.findings:
        print(finding.line(), file=out)
    repaired = sum(f.repaired for f in run.findings)
    hint = " (run with --repair to fix what is safe to fix)" if (
        not run.config.repair and run.findings) else ""
    print(f"check: {len(run.findings)} problems, {repaired} repaired{hint} "
          f"[{run.conversations_checked} conversations, {run.jobs_checked} jobs]", file=out)
