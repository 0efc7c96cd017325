"""The newest turn, after its reply: another reply, more of it, another chosen one, a
corrected message. And the table of states the page reads (GET /api/states)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import (
    CallerDep,
    ChatServiceDep,
    ConversationReaderDep,
    LifecycleDep,
    OwnConversationDep,
)
from api.routes.conversations import ConversationId
from api.schemas import ACCEPTED, JobOut, TurnOut, errors
from context.types import user_seq
from core import contract
from core.errors import NotFound
from core.states import states_document
from core.turns import TURN_NOT_FOUND

router = APIRouter(prefix="/api", tags=["turns"])

TurnNumber = Annotated[int, Path(ge=1, le=2**31, description="The turn (1 = the first message)")]


class ChooseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0, le=1000, description="Which reply (0-based, as `replies` counts)")


class EditRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: str = Field(min_length=1, pattern=contract.NOT_BLANK,
                         description="The corrected message (checked like a new one)")


def accepted(job: JobOut, response: Response) -> JobOut:
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job


@router.post("/conversations/{conversation_id}/turns/{turn}/regenerate", status_code=202,
             response_model=JobOut, responses={**ACCEPTED, **errors(404, 409, 429)})
def regenerate(conversation_id: ConversationId, turn: TurnNumber, service: ChatServiceDep,
               response: Response) -> JobOut:
    """Write another reply to the newest turn's message; the turn keeps the replies it had
    (up to 10, the oldest dropped) and the new one becomes the chosen one. 409 while a job
    of the conversation runs, or on an older turn than the newest (branch from it instead)."""
    job = service.regenerate(conversation_id=conversation_id, turn=turn)
    return accepted(JobOut.of(job), response)


@router.post("/conversations/{conversation_id}/turns/{turn}/continue", status_code=202,
             response_model=JobOut, responses={**ACCEPTED, **errors(404, 409, 429)})
def continue_turn(conversation_id: ConversationId, turn: TurnNumber, service: ChatServiceDep,
                  response: Response) -> JobOut:
    """Ask the model to go on from the newest reply's text so far (a completed reply, or
    the text an incomplete one kept): the job's text starts with it and grows, and the
    reply is replaced by the longer one when the job completes."""
    job = service.continue_turn(conversation_id=conversation_id, turn=turn)
    return accepted(JobOut.of(job), response)


@router.put("/conversations/{conversation_id}/turns/{turn}/message", status_code=202,
            response_model=JobOut, responses={**ACCEPTED, **errors(404, 409, 422, 429)})
def edit_message(conversation_id: ConversationId, turn: TurnNumber, body: EditRequest,
                 service: ChatServiceDep, response: Response) -> JobOut:
    """Replace the newest turn's message (validated like a new one) and write a new reply;
    the old reply and its alternatives are dropped and recall forgets the old text."""
    job = service.edit_message(conversation_id=conversation_id, turn=turn, text=body.message)
    return accepted(JobOut.of(job), response)


@router.put("/conversations/{conversation_id}/turns/{turn}/chosen", response_model=TurnOut,
            responses=errors(404, 409, 422))
def choose(conversation_id: ConversationId, stored: OwnConversationDep, turn: TurnNumber,
           body: ChooseRequest, lifecycle: LifecycleDep, reader: ConversationReaderDep,
           caller: CallerDep) -> TurnOut:
    """Make another of the newest turn's replies the chosen one: later prompts and recall
    see it alone. Answers the turn as the history shows it."""
    lifecycle.choose(conversation_id=stored, turn=turn, index=body.index,
                     person=caller.person or "")
    page = reader.turns(stored, limit=1, after=user_seq(turn) - 1)
    if not page.turns or page.turns[0].turn != turn:
        raise NotFound(TURN_NOT_FOUND)
    return TurnOut.of(page.turns[0])


class StatesOut(BaseModel):
    job_states: dict[str, dict[str, Any]] = Field(description="status -> final, retryable, label")
    turn_states: dict[str, dict[str, Any]] = Field(
        description="state -> label, ending (what the page says under a turn that ended "
                    "without a reply, or null), quiet (the person's own stop), actions")
    newest_only: list[str] = Field(description="Actions offered on the newest turn only")
    actions: list[str] = Field(description="Every action, in the order the page shows them")


@router.get("/states", response_model=StatesOut, responses=errors())
def states() -> StatesOut:
    """Which job and turn states exist, which are final, which actions each offers: the
    page reads this instead of keeping its own copy."""
    return StatesOut(**states_document())
