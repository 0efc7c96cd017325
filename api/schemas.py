"""The HTTP contract: every request and response body the API speaks, so that /openapi.json
describes real fields. Routes build these from the core's objects; nothing here reads Redis.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from context.types import Message
from core import contract
from core.contract import anchored
from core.conversations import ConversationView, TurnPage, TurnView
from core.errors import ErrorCode
from core.incidents import Incident
from core.models import Job, JobStatus, StepName, StepStatus, iso
from core.monitoring import QueueStats
from core.namespaces import external_id
from core.states import Action, TurnState

# Limits a client can see in the schema; the service enforces the same (and the token limit).
CONVERSATION_ID_PATTERN = anchored(contract.CONVERSATION_ID)
JOB_ID_PATTERN = anchored(contract.JOB_ID)
IDEMPOTENCY_KEY_PATTERN = anchored(contract.IDEMPOTENCY_KEY)
MAX_WAIT_S = 30.0

Timestamp = str  # ISO 8601 UTC with milliseconds and a trailing Z


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------------------


class ErrorDetail(Contract):
    code: str = Field(description="Machine-readable: invalid_input, message_too_large, "
                      "idempotency_key_reused, not_found, conflict, queue_full, "
                      "store_unavailable, request_timeout, http_405, internal")
    message: str = Field(description="What is wrong, in Japanese, for the user")


class ErrorBody(Contract):
    error: ErrorDetail


class JobErrorOut(Contract):
    code: ErrorCode = Field(description="Why the job ended without a reply")
    message: str = Field(description="The same, in Japanese, for the user")


# -- requests -------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # No max_length here: the limit is a setting (MYSISTERDB_MAX_MESSAGE_CHARS), enforced by
    # the service and stated in the OpenAPI document (api/openapi_limits.py).
    message: str = Field(min_length=1, pattern=contract.NOT_BLANK,
                         description="The user's message (not blank; at most "
                         "MYSISTERDB_MAX_MESSAGE_CHARS characters and the context's token "
                         "budget, else 422 message_too_large)")
    conversation_id: str = Field(default="default", pattern=CONVERSATION_ID_PATTERN,
                                 description="Letters, digits, - and _ (1-64)")


# -- jobs -----------------------------------------------------------------------------------


class StepOut(Contract):
    name: StepName
    status: StepStatus = Field(description="pending, in_progress, completed, failed, skipped, "
                               "or cancelled (the step a cancelled job was in or waiting for)")
    started_at: Timestamp | None
    completed_at: Timestamp | None
    detail: str | None


class JobOut(Contract):
    id: str = Field(pattern=JOB_ID_PATTERN)
    conversation_id: str
    turn: int = Field(ge=1, description="The turn slot: user message seq 2t-1, reply seq 2t")
    status: JobStatus
    sequence: int = Field(ge=0, description="Grows with every change of the job: follow it "
                          "with ?wait=&after=sequence or the SSE stream's event ids")
    steps: list[StepOut]
    partial_reply: str = Field(description="The text generated so far (kept when incomplete)")
    reply: str | None
    error: JobErrorOut | None = Field(description="Set for failed and incomplete jobs; "
                                      "null for completed and cancelled ones")
    retry_of: str | None = Field(description="The job this one retries")
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id, conversation_id=external_id(job.conversation_id), turn=job.turn, status=job.status,
            sequence=job.sequence,
            steps=[StepOut(name=StepName(s.name), status=s.status, started_at=iso(s.started_at),
                           completed_at=iso(s.completed_at), detail=s.detail)
                   for s in job.steps],
            partial_reply=job.partial_reply, reply=job.reply,
            error=JobErrorOut(code=job.error.code, message=job.error.message)
            if job.error else None,
            retry_of=job.retry_of, created_at=iso(job.created_at) or "",
            started_at=iso(job.started_at), completed_at=iso(job.completed_at))


# -- conversations --------------------------------------------------------------------------


class MessageOut(Contract):
    seq: int
    text: str
    created_at: str

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        return cls(seq=message.seq, text=message.text, created_at=message.created_at)


class TurnJobOut(Contract):
    id: str
    status: JobStatus
    sequence: int
    partial_reply: str
    error: JobErrorOut | None


class TurnOut(Contract):
    turn: int
    state: TurnState = Field(description="completed (reply set), queued / in_progress (job "
                             "running, partial text so far), failed / incomplete / cancelled "
                             "(job.error, partial text for incomplete; retryable), unknown (no "
                             "reply and the job record is gone)")
    user: MessageOut
    reply: MessageOut | None
    job: TurnJobOut | None = Field(description="The turn's newest job (after a retry, the retry; "
                                   "after a regenerate or continue, that job)")
    retryable: bool = Field(description="POST /api/jobs/{job.id}/retry would send it again")
    replies: int = Field(description="How many replies the turn has (more than 1 after a "
                         "regenerate; at most 10, the oldest dropped)")
    chosen: int = Field(description="Which of them `reply` is (0-based); only it is remembered")
    actions: list[Action] = Field(description="What the turn offers now (GET /api/states says "
                                  "what each state offers; some only on the newest turn)")

    @classmethod
    def of(cls, view: TurnView) -> TurnOut:
        job = view.job
        return cls(
            turn=view.turn, state=view.state,
            user=MessageOut.of(view.user),
            reply=MessageOut.of(view.reply) if view.reply else None,
            job=TurnJobOut(id=job.id, status=job.status, sequence=job.sequence,
                           partial_reply=job.partial_reply,
                           error=JobErrorOut(code=job.error.code, message=job.error.message)
                           if job.error else None) if job else None,
            retryable=Action.RETRY in view.actions, replies=view.reply_count,
            chosen=view.chosen, actions=view.actions)


class HistoryOut(Contract):
    conversation_id: str
    turns: list[TurnOut] = Field(description="Oldest first")
    has_more_before: bool = Field(description="Older turns exist: page with "
                                  "before=turns[0].user.seq")
    has_more_after: bool = Field(description="Newer turns exist: page with "
                                 "after=turns[-1].user.seq")

    @classmethod
    def of(cls, cid: str, page: TurnPage) -> HistoryOut:
        return cls(conversation_id=cid, turns=[TurnOut.of(t) for t in page.turns],
                   has_more_before=page.has_more_before, has_more_after=page.has_more_after)


class ConversationOut(Contract):
    id: str
    title: str = Field(description="The first user message, shortened")
    message_count: int
    last_activity: Timestamp
    job_running: bool = Field(description="A job of the conversation is queued or running")

    @classmethod
    def of(cls, view: ConversationView) -> ConversationOut:
        return cls(id=external_id(view.id), title=view.title, message_count=view.message_count,
                   last_activity=iso(view.last_activity) or "", job_running=view.job_running)


class ConversationListOut(Contract):
    conversations: list[ConversationOut] = Field(description="Newest activity first")
    next_before: Timestamp | None = Field(description="Pass as `before` for the next page; "
                                          "null on the last page")


class ResetOut(Contract):
    conversation_id: str
    reset: bool


# -- signing in ------------------------------------------------------------------------------


class SignInRequest(Contract):
    token: str = Field(min_length=1, max_length=512, description="A person's access token")


class SessionOut(Contract):
    person: str | None = Field(description="Whose conversations this session shows")
    operator: bool = Field(description="Whether the operator routes are open to it")
    mode: Literal["open", "generated", "tokens"] = Field(
        description="open: loopback without tokens, nobody signs in; generated: one "
                    "generated token; tokens: configured tokens")


# -- operations -----------------------------------------------------------------------------


class SlotsOut(Contract):
    total: int = Field(description="The online chat workers' maximum pool size")
    busy: int
    free: int
    forked: int = Field(description="Pool processes that exist now")


class QueueOut(Contract):
    # The monitor may learn more figures than listed here: they pass through.
    model_config = ConfigDict(extra="allow")

    waiting: int = Field(description="Prompts in the broker, all priority sub-lists")
    waiting_by_queue: dict[str, int]
    reserved: int = Field(description="Taken by a worker but not started")
    unacked: int
    running: int
    workers_online: int
    capacity: int
    oldest_waiting_age_s: float | None
    last_job_started_age_s: float | None
    slots: SlotsOut
    not_started: int = Field(description="Stored prompts not started: in the broker or "
                                         "typed ahead, waiting for their turn")
    recent_reply_s: float = Field(description="Mean time of the recent prompts, in seconds")
    reply_samples: int
    expected_wait_s: float | None = Field(description="For a prompt arriving now (null: no "
                                                      "chat slot online)")
    admission_cap: int = Field(description="429 from this many prompts not started")
    retry_after_s: int
    workers: list[dict[str, Any]]

    @classmethod
    def of(cls, stats: QueueStats) -> QueueOut:
        fields = asdict(stats)
        if stats.oldest_waiting_age_s is not None:
            fields["oldest_waiting_age_s"] = round(stats.oldest_waiting_age_s, 3)
        return cls(**fields)


class IncidentOut(Contract):
    at: Timestamp
    kind: str = Field(description="An error code, or process_exit")
    job_id: str | None
    conversation_id: str | None
    step: str | None = Field(description="Where it stopped")
    input: str
    cause: str
    action: str = Field(description="What was done: killed, retried, worker replaced, restarted")

    @classmethod
    def of(cls, incident: Incident) -> IncidentOut:
        return cls(**asdict(incident))


class IncidentListOut(Contract):
    incidents: list[IncidentOut] = Field(description="Newest first")


class Check(Contract):
    ok: bool
    detail: str


class WorkersCheck(Contract):
    ok: bool
    online: int
    names: list[str]
    chat_slots: int = Field(description="Chat prompts the online workers can run at once")


class QueueSummary(Contract):
    waiting: int
    reserved: int
    running: int
    oldest_waiting_age_s: float | None
    slots_busy: int
    slots_free: int


class LLMInfo(Contract):
    mode: Literal["simulator", "gemini"]
    note: str
    ok: bool | None = Field(
        description="the LLM endpoint answered its last check (null: the first is running)")
    endpoint: str = Field(description="where Gemini requests go")
    detail: str = Field(description="why the check failed, or ok")
    checked_s_ago: float | None = Field(description="age of the check's result, in seconds")


class HealthOut(Contract):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok; degraded (200): the stack runs but the LLM endpoint does not answer; "
                    "unavailable (503): Redis, the workers or consumption is not ok")
    redis: Check
    workers: WorkersCheck | None = None
    consuming: Check | None = None
    queue: QueueSummary | None = None
    llm: LLMInfo
    time: Timestamp


class TimeOut(Contract):
    time: Timestamp


# -- error statuses per route ---------------------------------------------------------------

ERROR_TEXT = {
    400: "The Host header is not one of MYSISTERDB_ALLOWED_HOSTS",
    401: "No valid token or session (WWW-Authenticate: Bearer); the chat page signs in",
    403: "A page of another site asked for a change, or the token may not use this route",
    404: "Not found (unknown job or conversation, or another person's)",
    409: "Not possible in the job's current state",
    422: "Invalid input: bad id, parameter, body, token budget, or a reused Idempotency-Key",
    429: "Too many prompts waiting, or the person's rate limit (Retry-After header)",
    503: "The data store (Redis) is unavailable",
    504: "The request took longer than MYSISTERDB_REQUEST_TIMEOUT",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer, with the real body.
    Every route that reads Redis can answer 503 and every watched request 504, and every
    route that needs a token 400, 401 and 403: always listed."""
    wanted = sorted(set(statuses) | {400, 401, 403, 422, 503, 504})
    documented: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorBody, "description": ERROR_TEXT[s]} for s in wanted}
    if 429 in documented:
        documented[429]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before sending again", "schema": {"type": "integer"}}}
    return documented


ACCEPTED: dict[int | str, dict[str, Any]] = {202: {
    "description": "Accepted: the job (follow its Location)",
    "headers": {"Location": {"description": "/api/jobs/{id} of the new job",
                             "schema": {"type": "string"}}}}}


def stream_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same for a streaming route, whose errors are JSON although its answer is not
    (and which the request watchdog does not watch: no 504)."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {s: {"description": ERROR_TEXT[s], "content": body}
            for s in sorted(set(statuses) | {400, 401, 403, 422, 503})}
