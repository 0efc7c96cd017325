"""Conversations: the list by last activity, a conversation's turns with their state,
deleting one, and the operators' reset."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.deps import (
    CallerDep,
    ConversationReaderDep,
    HistoryDep,
    LifecycleDep,
    OwnConversationDep,
)
from api.schemas import (
    CONVERSATION_ID_PATTERN,
    ConversationListOut,
    ConversationOut,
    HistoryOut,
    ResetOut,
    errors,
)
from core.conversations import MAX_CONVERSATIONS, MAX_TURNS
from core.errors import CONVERSATION_NOT_FOUND, InvalidInput, NotFound
from core.namespaces import internal_id

router = APIRouter(prefix="/api", tags=["conversations"])

ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID_PATTERN,
                                     description="Letters, digits, - and _ (1-64)")]
ISO_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?$"
MAX_SEQ = 2**53  # a seq beyond any conversation; bigger numbers are refused


@router.get("/conversations", response_model=ConversationListOut, responses=errors())
def list_conversations(
    reader: ConversationReaderDep, caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_CONVERSATIONS,
                                description="How many (1-100)")] = 20,
    before: Annotated[str | None, Query(
        pattern=ISO_TIME, json_schema_extra={"format": "date-time"},
        description="Only conversations whose last activity is older: an ISO 8601 time, the "
                    "previous page's next_before")] = None,
) -> ConversationListOut:
    """The caller's conversations, newest activity first: id, title (the first user message,
    shortened), message count, last activity, whether a job is queued or running."""
    views = reader.newest(limit=limit, before=parse_time(before) if before else None,
                          person=caller.person)
    out = [ConversationOut.of(v) for v in views]
    return ConversationListOut(conversations=out,
                               next_before=out[-1].last_activity if len(out) == limit else None)


@router.get("/conversations/{conversation_id}/messages", response_model=HistoryOut,
            responses=errors(404))
def list_turns(
    conversation_id: ConversationId, stored: OwnConversationDep, reader: ConversationReaderDep,
    lifecycle: LifecycleDep, caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_TURNS, description="How many turns (1-100)")] = 50,
    before: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description=(
        "Only turns whose user message seq is below this (page back with turns[0].user.seq)"))
    ] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description=(
        "Only turns whose user message seq is above this (page on with turns[-1].user.seq)"))
    ] = None,
) -> HistoryOut:
    """Every turn as it is, oldest first: the user's message, then the reply, or the job
    still running (status, partial text), or the failure (error code and message, partial
    text for incomplete; retryable). Without cursors: the newest `limit` turns. A
    conversation nobody has written in yet has no turns; another person's is 404."""
    lifecycle.check_owner(stored, caller.person or "")
    page = reader.turns(stored, limit=limit, before=before, after=after)
    return HistoryOut.of(conversation_id, page)


@router.delete("/conversations/{conversation_id}", status_code=204, response_class=Response,
               responses=errors(404))
def delete_conversation(conversation_id: ConversationId, stored: OwnConversationDep,
                        lifecycle: LifecycleDep, caller: CallerDep) -> Response:
    """Delete the conversation: messages, index, summary, jobs. Its queued and running jobs
    end cancelled first, in the same transaction, so none can write into it afterwards."""
    lifecycle.check_owner(stored, caller.person or "")
    deleted = lifecycle.delete_conversation(stored)
    if deleted is None:
        raise NotFound(CONVERSATION_NOT_FOUND)
    return Response(status_code=204)


def parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput("before は ISO 8601 の日時で指定してください（例 2025-01-01T00:00:00Z）。"
                           ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def reset(conversation_id: str, history: HistoryDep, lifecycle: LifecycleDep,
          caller: CallerDep) -> ResetOut:
    person = caller.person or ""
    stored = internal_id(lifecycle, person=person, conversation_id=conversation_id)
    lifecycle.check_owner(stored, person)
    history.reset(stored)
    return ResetOut(conversation_id=conversation_id, reset=True)


@router.post("/conversations/{conversation_id}/reset", response_model=ResetOut,
             responses=errors(404))
def reset_conversation(conversation_id: ConversationId, history: HistoryDep,
                       lifecycle: LifecycleDep, caller: CallerDep) -> ResetOut:
    """Forget the conversation's messages, index and summary (jobs and the turn counter
    stay). Clients delete with DELETE /api/conversations/{id}."""
    return reset(conversation_id, history, lifecycle, caller)


@router.get("/reset_conversation", response_model=ResetOut, responses=errors(404))
def reset_conversation_legacy(
    history: HistoryDep, lifecycle: LifecycleDep, caller: CallerDep,
    conversation_id: Annotated[str, Query(pattern=CONVERSATION_ID_PATTERN)] = "default",
) -> ResetOut:
    """The old runbook's emergency reset, kept for those who know it: the caller's own
    conversation only, and refused when a page of another site triggers it."""
    return reset(conversation_id, history, lifecycle, caller)
