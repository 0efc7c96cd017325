"""Export a conversation (our JSON or Markdown), import one (our JSON or a SillyTavern
chat), branch one at a turn. The work is core/transfer*.py's and core/sillytavern.py's."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CallerDep,
    LifecycleDep,
    OwnConversationDep,
    SettingsDep,
    TransferStoreDep,
)
from api.routes.conversations import ConversationId
from api.schemas import (
    CONVERSATION_ID_PATTERN,
    BranchRequest,
    CreatedConversationOut,
    ExportOut,
    errors,
)
from core.namespaces import internal_id
from core.settings import Settings
from core.transfer import ImportLimits, dumps, to_json, to_markdown
from core.transfer_store import new_conversation_id, parse_upload

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["conversations"])

DEADLINE_MARGIN_S = 1.0  # stop before the watchdog's 504, so nothing appears after it
CREATED: dict[int | str, dict[str, Any]] = {201: {
    "description": "Created: the new conversation (follow its Location)",
    "headers": {"Location": {"description": "/api/conversations/{id} of the new conversation",
                             "schema": {"type": "string"}}}}}
IMPORT_BODY = {"required": True, "content": {
    # Any object here: the server reads it field by field and answers 422 naming the one
    # that is wrong (the file was exported as ExportOut; unknown fields are ignored).
    "application/json": {"schema": {
        "type": "object", "description": "This server's export (ExportOut, format=json)"}},
    "application/x-ndjson": {"schema": {
        "type": "string", "description": "A SillyTavern chat file (.jsonl): a header line "
        "(user_name, character_name, chat_metadata), then one message per line"}}}}


def deadline(settings: Settings) -> float:
    return time.monotonic() + settings.import_timeout_s - DEADLINE_MARGIN_S


def created(response: Response, out: CreatedConversationOut) -> CreatedConversationOut:
    response.headers["Location"] = f"/api/conversations/{out.conversation_id}"
    return out


@router.get("/conversations/{conversation_id}/export", response_class=Response,
            responses={200: {"description": "The file (Content-Disposition: attachment)",
                             "model": ExportOut,
                             "content": {"text/markdown": {"schema": {"type": "string"}}}},
                       **errors(404)})
def export_conversation(
    conversation_id: ConversationId, stored: OwnConversationDep, store: TransferStoreDep,
    caller: CallerDep,
    format: Annotated[Literal["json", "markdown"], Query(
        description="json: lossless (every reply of regenerated turns, timestamps, tokens), "
                    "what import takes back; markdown: the chosen thread, for reading")] = "json",
) -> Response:
    """The conversation as a file to keep or move. Another person's is 404."""
    store.check_owned(stored, caller.person or "")
    transcript = store.transcript(stored)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if format == "markdown":
        body, media, ext = to_markdown(conversation_id, transcript), "text/markdown", "md"
    else:
        body, media, ext = dumps(to_json(conversation_id, transcript)), "application/json", "json"
    filename = f"mysisterdb-{conversation_id}-{stamp}.{ext}"
    return Response(body.encode(), media_type=f"{media}; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.post("/conversations/import", status_code=201, response_model=CreatedConversationOut,
             responses={**CREATED, **errors(409, 413, 429)}, openapi_extra={"requestBody": IMPORT_BODY})
async def import_conversation(
    request: Request, store: TransferStoreDep, caller: CallerDep, settings: SettingsDep,
    lifecycle: LifecycleDep, response: Response,
    conversation_id: Annotated[str | None, Query(
        pattern=CONVERSATION_ID_PATTERN,
        description="The new conversation's id (generated when absent; 409 if taken)")] = None,
) -> CreatedConversationOut:
    """A new conversation of the caller's from a file, as the request body: this server's
    JSON export, or a SillyTavern chat (.jsonl). Indexed for recall as it is written; its
    summary is built in the background. Whole or nothing: a file that is refused (413 over
    MYSISTERDB_MAX_IMPORT_BYTES, 422 naming the line or field, 409 id taken) stores
    nothing. Counts as one prompt against the person's rate limit."""
    person = caller.person or ""
    limiter = request.app.state.limiter
    await run_in_threadpool(limiter.hit, person)
    # Bounded before it is read: api/limits.py answers 413 past MYSISTERDB_MAX_IMPORT_BYTES.
    raw = await request.body()
    limits = ImportLimits(max_turns=settings.max_import_turns,
                          max_message_chars=settings.max_message_chars)
    until = deadline(settings)
    cid = conversation_id or new_conversation_id()

    def work() -> CreatedConversationOut:
        source, transcript = parse_upload(raw, limits=limits)
        store.create(internal_id(lifecycle, person=person, conversation_id=cid), owner=person,
                     transcript=transcript, deadline=until)
        return CreatedConversationOut(conversation_id=cid, turns=len(transcript.turns),
                                      source=source)  # type: ignore[arg-type]

    return created(response, await run_in_threadpool(work))



@router.post("/conversations/{conversation_id}/branch", status_code=201,
             response_model=CreatedConversationOut, responses={**CREATED, **errors(404, 409, 429)})
def branch_conversation(
    conversation_id: ConversationId, stored: OwnConversationDep, body: BranchRequest,
    store: TransferStoreDep, lifecycle: LifecycleDep, caller: CallerDep, settings: SettingsDep,
    request: Request, response: Response,
) -> CreatedConversationOut:
    """A new conversation of the caller's holding turns 1..`turn` (user messages, chosen
    replies and the other replies of regenerated turns), indexed for recall, its summary
    rebuilt in the background; the original is untouched. 404 another person's or an
    unknown conversation, 422 a turn that is not stored or has no reply, 409 a turn up to
    it still running or the new id taken. Counts as one prompt against the rate limit."""
    person = caller.person or ""
    store.check_owned(stored, person)  # 404 before 429
    request.app.state.limiter.hit(person)
    new_id = body.conversation_id or new_conversation_id()
    turns = store.branch(stored, person=person, turn=body.turn,
                         new_id=internal_id(lifecycle, person=person, conversation_id=new_id),
                         deadline=deadline(settings))
    return created(response, CreatedConversationOut(conversation_id=new_id, turns=turns,
                                                    source="branch"))
