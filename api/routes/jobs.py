from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CeleryDep, JobsDep, SettingsDep
from mysisterdb.errors import Conflict
from mysisterdb.models import JobStatus
from mysisterdb.ordering import reap_if_stale

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(job_id: str, jobs: JobsDep, settings: SettingsDep) -> dict[str, Any]:
    # A reader may be the first to notice that a job's worker died with it.
    job = reap_if_stale(jobs, jobs.get(job_id), hard_limit_s=settings.task_time_limit,
                        queue_timeout_s=settings.queue_timeout_s)
    return job.public()


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, jobs: JobsDep, celery: CeleryDep) -> dict[str, Any]:
    """Cancel a queued or running job (the running task is terminated, best effort)."""
    jobs.get(job_id)  # 404 for an unknown job
    ended = jobs.finalize(job_id, status=JobStatus.CANCELLED)
    if ended is None:
        raise Conflict(f"ジョブはすでに終了しています（{jobs.get(job_id).status.value}）。")
    # The status it had when *we* ended it decides whether a process must be stopped.
    running = ended.previous_status is JobStatus.IN_PROGRESS
    celery.control.revoke(job_id, terminate=running, signal="SIGTERM")
    return ended.public()
