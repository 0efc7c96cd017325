from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import HistoryDep
from mysisterdb.chat import check_conversation_id

router = APIRouter(prefix="/api", tags=["conversations"])


@router.get("/conversations/{conversation_id}/messages")
def list_messages(conversation_id: str, history: HistoryDep,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The last `limit` messages, oldest first."""
    check_conversation_id(conversation_id)
    messages = history.last(conversation_id, limit=limit)
    return {"messages": [
        {"seq": m.seq, "role": m.role, "text": m.text, "created_at": m.created_at,
         "job_id": m.job_id}
        for m in messages
    ]}


def reset(conversation_id: str, history: HistoryDep) -> dict[str, Any]:
    check_conversation_id(conversation_id)
    history.reset(conversation_id)
    return {"conversation_id": conversation_id, "reset": True}


@router.post("/conversations/{conversation_id}/reset")
def reset_conversation(conversation_id: str, history: HistoryDep) -> dict[str, Any]:
    """Forget the conversation's messages and summary."""
    return reset(conversation_id, history)


@router.get("/reset_conversation")
def reset_conversation_legacy(history: HistoryDep,
                              conversation_id: str = "default") -> dict[str, Any]:
    """The old runbook's emergency reset, kept for operators who know it."""
    return reset(conversation_id, history)
