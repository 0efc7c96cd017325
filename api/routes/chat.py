from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel

from api.deps import ChatServiceDep

router = APIRouter(prefix="/api", tags=["chat"])


class ChatRequest(BaseModel):
    message: str
    conversation_id: str = "default"


@router.post("/chat", status_code=202)
def submit_chat(
    body: ChatRequest, service: ChatServiceDep, response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    """Store the message, queue its job and answer at once; poll the Location for the reply."""
    submitted = service.submit(conversation_id=body.conversation_id, text=body.message,
                               idempotency_key=idempotency_key)
    response.headers["Location"] = f"/api/jobs/{submitted.job.id}"
    return submitted.job.public()
