from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from api.deps import ChatServiceDep
from api.schemas import ACCEPTED, IDEMPOTENCY_KEY_PATTERN, ChatRequest, JobOut, errors

router = APIRouter(prefix="/api", tags=["chat"])


@router.post("/chat", status_code=202, response_model=JobOut, responses={**ACCEPTED, **errors(429)})
def submit_chat(
    body: ChatRequest, service: ChatServiceDep, response: Response,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Makes a resend safe: the same key with the same body returns the first "
                    "job (24 h); with a different body, 422 idempotency_key_reused")] = None,
) -> JobOut:
    """Store the message, queue its job and answer at once; follow the Location
    (long-poll `?wait=&after=`, or `/events` for Server-Sent Events)."""
    submitted = service.submit(conversation_id=body.conversation_id, text=body.message,
                               idempotency_key=idempotency_key)
    response.headers["Location"] = f"/api/jobs/{submitted.job.id}"
    return JobOut.of(submitted.job)
