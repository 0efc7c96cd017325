"""The steps of one prompt: load_history, build_context, generate, save.

Each step is recorded as it starts and ends in the job record. Writes go through
JobStore.update, which refuses to touch a job that already ended (cancelled, or marked
failed by the parent after a hard limit), so a late child can never resurrect it.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from context.builder import BuiltContext, build_context
from context.types import Message
from mysisterdb.errors import LLMError
from mysisterdb.jobs import fail_job
from mysisterdb.models import (
    ErrorCode,
    Job,
    JobStatus,
    StepName,
    StepStatus,
    iso,
    utcnow,
)
from workers.llm import PartialReplyError
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

STUCK_DIRECTIVE = "#worker:stuck"
TIMEOUT_MESSAGE = "応答生成がタイムアウトしました。もう一度試してください。"


class JobGone(Exception):
    """The job ended under us (cancelled, or finalized elsewhere): stop working on it."""


def user_seq(job: Job) -> int:
    return 2 * job.turn - 1


def reply_seq(job: Job) -> int:
    return 2 * job.turn


def start_step(rt: Runtime, job_id: str, name: StepName) -> None:
    def start(job: Job) -> None:
        s = job.step(name)
        s.status, s.started_at = StepStatus.IN_PROGRESS, utcnow()
        job.heartbeat_at = s.started_at

    if rt.jobs.update(job_id, start) is None:
        raise JobGone(job_id)


@contextmanager
def step(rt: Runtime, job_id: str, name: StepName) -> Iterator[dict[str, str]]:
    """Record a step's start and end; the body may set detail['text']."""
    detail: dict[str, str] = {}
    start_step(rt, job_id, name)
    yield detail

    def finish(job: Job) -> None:
        s = job.step(name)
        s.status, s.completed_at = StepStatus.COMPLETED, utcnow()
        s.detail = detail.get("text")
        job.heartbeat_at = s.completed_at

    finished = rt.jobs.update(job_id, finish)
    if finished is None:
        raise JobGone(job_id)
    s = finished.step(name)
    if s.started_at and s.completed_at:
        rt.metrics.observe("step_duration", (s.completed_at - s.started_at).total_seconds(),
                           name.value)


def load_message(rt: Runtime, job: Job) -> Message:
    found = rt.history.before(job.conversation_id, before_seq=user_seq(job) + 1, limit=1)
    if not found or found[-1].seq != user_seq(job):
        raise LookupError(f"user message {user_seq(job)} of job {job.id} is missing")
    return found[-1]


def run_chat(rt: Runtime, job: Job, *, deadline: float) -> None:
    """Run every step of a started job and finalize it."""
    with step(rt, job.id, StepName.LOAD_HISTORY) as detail:
        message = load_message(rt, job)
        detail["text"] = f"message seq {message.seq}, {message.tokens} tokens"
    with step(rt, job.id, StepName.BUILD_CONTEXT) as detail:
        built = build(rt, job, message)
        detail["text"] = built.describe()
    with step(rt, job.id, StepName.GENERATE) as detail:
        reply = generate(rt, job, built, deadline=deadline)
        detail["text"] = f"{len(reply)} characters"
    start_step(rt, job.id, StepName.SAVE)
    commit_reply(rt, job, reply)


def build(rt: Runtime, job: Job, message: Message) -> BuiltContext:
    s = rt.settings
    return build_context(store=rt.history, conversation_id=job.conversation_id,
                         new_message=message, persona=rt.persona,
                         max_tokens=s.max_context_tokens, preserve_recent=s.preserve_recent,
                         relevance_threshold=s.relevance_threshold, relevance_floor=s.relevance_floor)


def generate(rt: Runtime, job: Job, built: BuiltContext, *, deadline: float) -> str:
    if rt.settings.debug_directives and STUCK_DIRECTIVE in built.contents[-1].text:
        stuck_in_c()
    return rt.llm.stream(system_instruction=built.system_instruction,
                         contents=list(built.contents), deadline=deadline,
                         on_text=partial_writer(rt, job.id))


def partial_writer(rt: Runtime, job_id: str) -> Callable[[str], None]:
    """Writes the whole text so far (not a delta): a write repeated after a lost reply
    from Redis can never duplicate text."""
    so_far: list[str] = []

    def on_text(text: str) -> None:
        so_far.append(text)
        whole = "".join(so_far)

        def show(job: Job) -> None:
            job.partial_reply = whole
            job.heartbeat_at = utcnow()

        if rt.jobs.update(job_id, show) is None:
            raise JobGone(job_id)

    return on_text


def commit_reply(rt: Runtime, job: Job, reply: str) -> Message:
    """Store the reply and complete the job in one transaction: a job cancelled or timed out
    a moment before never leaves a reply in the history, and a completed job always has one."""
    from context.tokens import count_tokens

    message = Message(seq=reply_seq(job), role="assistant", text=reply,
                      tokens=count_tokens(reply), created_at=iso_now(), job_id=job.id)

    def detail(current: Job) -> None:
        current.step(StepName.SAVE).detail = f"reply seq {message.seq}"

    ended = rt.jobs.finalize(job.id, status=JobStatus.COMPLETED, reply=reply, extra=detail,
                             after=lambda pipe, _job: rt.history.append(
                                 job.conversation_id, message, pipe=pipe))
    if ended is None:
        raise JobGone(job.id)
    save = ended.step(StepName.SAVE)
    if save.started_at and save.completed_at:
        rt.metrics.observe("step_duration",
                           (save.completed_at - save.started_at).total_seconds(), "save")
    return message


def iso_now() -> str:
    return iso(utcnow()) or ""


def fail(rt: Runtime, job_id: str, *, code: ErrorCode, message: str, exception: str,
         action: str, partial_ok: bool = True) -> None:
    fail_job(rt.jobs, job_id, code=code, message=message, exception=exception, action=action,
             partial_ok=partial_ok)


def fail_llm(rt: Runtime, job_id: str, error: LLMError) -> None:
    if isinstance(error, PartialReplyError):
        # The stream broke mid-way: keep exactly what arrived.
        def keep(job: Job) -> None:
            job.partial_reply = error.partial

        rt.jobs.update(job_id, keep)
    code = ErrorCode.LLM_TIMEOUT if error.code == "llm_timeout" else ErrorCode.LLM_ERROR
    cause = error.__cause__ or getattr(error, "cause", None) or error
    fail(rt, job_id, code=code, message=error.message,
         exception=f"{type(cause).__name__}: {cause}"[:500],
         action=f"request failed after up to {rt.settings.gemini_retries} retries")


def stuck_in_c() -> None:
    """Test aid (MYSISTERDB_DEBUG_DIRECTIVES only): ignore the soft limit, block in libc.

    Blocks SIGUSR1 (Celery's soft-limit signal) and sleeps inside libc, like a C extension
    that never returns: only the hard limit's SIGKILL can end it.
    """
    logger.warning("debug directive: blocking in C until the hard time limit kills us")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGALRM})
    libc = ctypes.CDLL(None)
    while True:
        libc.sleep(3600)
        time.sleep(0)
