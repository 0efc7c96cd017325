from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CeleryDep, LifecycleDep
from mysisterdb.models import JobStatus

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(job_id: str, lifecycle: LifecycleDep) -> dict[str, Any]:
    # A reader may be the first to notice that a job's worker died with it.
    return lifecycle.reap(lifecycle.jobs.get(job_id), by="a reader of the job").public()


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, lifecycle: LifecycleDep, celery: CeleryDep) -> dict[str, Any]:
    """Cancel a queued or running job (the running task is terminated, best effort)."""
    ended = lifecycle.cancel(job_id)
    # The status it had when *we* ended it decides whether a process must be stopped.
    if ended.previous_status is not JobStatus.QUEUED:
        celery.control.revoke(job_id, terminate=True, signal="SIGTERM")
    return ended.public()
