"""Job records and the indexes that follow them: stale jobs, bad records, index audit.

Reads and repairs go through `JobStore`; a dead job is ended by the lifecycle's reaper,
like the sweep would (incident recorded, turn handed over).
"""

from __future__ import annotations

import logging

from core import keys
from core.models import Job, JobStatus, iso, utcnow
from mysisterdb.check.findings import Finding, Kind, Run

logger = logging.getLogger(__name__)

REPAIRED_BY = "mysisterdb check --repair"


def check_jobs(run: Run) -> None:
    listed = set(run.jobs.active_ids()) | set(run.jobs.running_ids())
    seen: set[str] = set()
    for job_id, raw in run.jobs.scan_records():
        seen.add(job_id)
        run.jobs_checked += 1
        job = _parse_job(run, job_id, raw)
        if job is not None:
            _check_job(run, job)
    for job_id in sorted(listed - seen):
        _unlist(run, job_id, why="its record expired or was deleted")


def _parse_job(run: Run, job_id: str, raw: bytes | None) -> Job | None:
    if raw is None:  # expired between SCAN and MGET
        return None
    try:
        return Job.model_validate_json(raw)
    except ValueError as exc:
        run.found(Finding(kind=Kind.BAD_JOB, job_id=job_id,
                          detail=f"record does not parse: {str(exc)[:200]}"))
        return None


def _check_job(run: Run, job: Job) -> None:
    check_job_indexes(run, job)
    if job.status.is_final:
        return
    reason = stale_reason(run, job)
    if reason is not None and _stale_job(run, job, reason):
        return
    run.live_jobs[job.conversation_id].add(job.id)


def stale_reason(run: Run, job: Job) -> str | None:
    """Why a queued or running job is surely dead, by the lifecycle's own rule, or None."""
    if run.lifecycle.death(job) is None:
        return None
    lim, running = run.lifecycle.limits, job.status is JobStatus.IN_PROGRESS
    since = (job.started_at or job.created_at) if running else job.created_at
    limit_s = lim.hard_limit_s + lim.grace_s if running else lim.queue_timeout_s
    age_s = (utcnow() - since).total_seconds()
    return (f"{'running' if running else 'queued'} since {iso(since)} ({age_s:.0f} s; limit "
            f"{limit_s:g} s, hard limit {lim.hard_limit_s:g} s)")


def _stale_job(run: Run, job: Job, reason: str) -> bool:
    """Report (and repair) a dead job; True when it is no longer live."""
    finding = run.found(Finding(kind=Kind.STALE_JOB, detail=reason,
                                conversation_id=job.conversation_id, job_id=job.id))
    if not run.config.repair:
        return False
    current = run.jobs.find(job.id)
    if current is None or current.status.is_final:
        finding.repaired, finding.detail = True, finding.detail + "; it ended meanwhile"
        return True
    ended = run.lifecycle.reap(current, by=REPAIRED_BY)
    if not ended.status.is_final:
        finding.detail += "; it moved on before the repair, left alone"
        return False
    finding.repaired = True
    code = ended.error.code.value if ended.error else "-"
    finding.detail += f"; marked {ended.status.value}/{code}"
    logger.warning("check: job %s marked %s/%s (%s)", job.id, ended.status.value, code, reason)
    return True


def _unlist(run: Run, job_id: str, *, why: str) -> None:
    """A job without a live record listed in the global job sets."""
    for key in (keys.active_jobs(), keys.running_jobs()):
        # The snapshot may be older than the record: ask again before reporting.
        if not run.jobs.in_index(key, job_id):
            continue
        finding = run.found(Finding(kind=Kind.ACTIVE_SET, job_id=job_id,
                                    detail=f"listed in {key} but {why}"))
        if run.config.repair:
            run.jobs.fix_index(key, add={}, remove={job_id})
            finding.repaired = True


def _in_step(run: Run, job: Job | None, job_id: str, key: str) -> bool:
    """Whether `key` lists the job exactly when its record (None: gone) says it should."""
    wanted = job is not None and run.jobs.index_entries(job)[key] is not None
    return run.jobs.in_index(key, job_id) == wanted


def check_job_indexes(run: Run, job: Job) -> None:
    for key in run.jobs.index_entries(job):
        if _in_step(run, job, job.id, key):
            continue
        current = run.jobs.find(job.id)  # it may have moved on (or expired) since our read
        if _in_step(run, current, job.id, key):
            continue
        score = run.jobs.index_entries(current)[key] if current is not None else None
        finding = run.found(Finding(
            kind=Kind.ACTIVE_SET, job_id=job.id, conversation_id=job.conversation_id,
            detail=f"{'missing from' if score is not None else 'still listed in'} "
                   f"{key} ({(current or job).status.value})"))
        if run.config.repair:
            add = {job.id: score} if score is not None else {}
            run.jobs.fix_index(key, add=add, remove=set() if add else {job.id})
            finding.repaired = True


def check_conversation_order(run: Run, cid: str) -> None:
    """Entries of the conversation's line (its order set) whose job record is gone."""
    key = keys.conv_active(cid)
    for job_id in run.jobs.line(cid):
        if run.jobs.find(job_id) is not None:
            continue  # a live or final record: check_job_indexes judged it
        finding = run.found(Finding(kind=Kind.ACTIVE_SET, job_id=job_id, conversation_id=cid,
                                    detail=f"listed in {key} but its record expired or was "
                                           "deleted"))
        if run.config.repair:
            run.jobs.fix_index(key, add={}, remove={job_id})
            finding.repaired = True
