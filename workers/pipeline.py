"""The steps of one prompt: load_history, build_context, generate, save.

Each step is recorded as it starts and ends (folded: one write ends a step and starts the
next), through the lifecycle, which refuses to touch
a job that already ended (cancelled, or ended by the parent after a hard limit): a late
child can never resurrect it (`JobGone`).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import time
from dataclasses import replace

import redis

from context.builder import BuiltContext, build_context
from context.summary import fold_due
from context.tokens import count_tokens
from context.types import Message, Turn, user_seq
from core.lifecycle import JobGone, Outcome, StepDone
from core.models import Job, JobKind, StepName, iso, utcnow
from core.turns import CONTINUE_PROMPT, reply_message
from workers.embeddings import semantic_source
from workers.runtime import Runtime
from workers.stream_text import CoalescedText

logger = logging.getLogger(__name__)

STUCK_DIRECTIVE = "#worker:stuck"
SPIN_DIRECTIVE = "#worker:spin"


def load_message(rt: Runtime, job: Job) -> Message:
    seq = user_seq(job.turn)
    found = rt.history.before(job.conversation_id, before_seq=seq + 1, limit=1)
    if not found or found[-1].seq != seq:
        raise LookupError(f"user message {seq} of job {job.id} is missing")
    return found[-1]


def run_chat(rt: Runtime, job: Job, *, deadline: float) -> bool:
    """Run every step of a claimed job and end it; True when a summary is due.

    Three writes for the steps (docs/performance.md "What a prompt costs"): the claim started
    load_history; one write ends it and build_context and starts generate (`advance`), made
    with the first streamed chunk (or once the text's interval is up without one); the end
    finishes generate and runs the save. Text in between is coalesced (workers/stream_text.py)."""
    message = load_message(rt, job)
    # load_history's end is written with build_context's (one write, one event less for
    # every follower); a failure of the build writes it first, so the failure names its step.
    loaded = StepDone(StepName.LOAD_HISTORY, f"message seq {message.seq}, {message.tokens} tokens",
                      utcnow())
    try:
        built, semantic = build(rt, job, message)
        if job.kind is JobKind.CONTINUE:
            built = continuing(built, job.continues, max_tokens=rt.settings.max_context_tokens)
    except BaseException:
        record_load(rt, job, loaded)
        raise
    detail = built.describe() + (f"; semantic: {semantic}" if semantic else "")
    generating = utcnow()
    # Each write hands on the record as written (`known`): the next is one round trip.
    known, opened = [job], [False]

    def show(whole: str) -> None:  # one write at a time (CoalescedText), main or timer thread
        if opened[0]:
            known[0] = rt.lifecycle.show_text(job.id, whole, known=known[0]) or known[0]
            return
        # The opening write: load and build ended, generate started (at its own time), with
        # the first chunk when the model sends it within the interval; no round trip of its
        # own between the build and the request to the model (docs/performance.md).
        known[0] = rt.lifecycle.advance(
            job.id, done=StepName.BUILD_CONTEXT, start=StepName.GENERATE, known=known[0],
            earlier=loaded, detail=detail, at=generating,
            text=whole if whole != job.continues else None)
        opened[0] = True

    text = CoalescedText(show, interval_s=rt.settings.stream_write_interval_s,
                         before=job.continues, opening=True)
    reply = generate(rt, job, built, text, deadline=deadline)
    if not opened[0]:  # no text within the interval (an empty reply): generate's start first
        text.close()
    generated = StepDone(StepName.GENERATE, f"{len(reply)} characters", utcnow())
    # Read before the end is written: a turn submitted once its sender saw this reply
    # completed is the next job's to judge (its build reads this reply), and must not
    # queue a summary for nothing here (a bot answering at once did, every turn).
    later = later_turns(rt, job)
    try:
        saved = commit_reply(rt, job, reply, last_step=generated, known=known[0])
    except JobGone:
        raise  # ended elsewhere (cancelled): nothing of ours to keep
    except BaseException:
        # The end did not happen (the soft limit, Redis): the text it was to write is
        # written now, so the failure recorded next keeps all of it.
        close_before_failure(text)
        raise
    return later or fold_due(built.tail, stored=[message, saved],
                             preserve_recent=rt.settings.preserve_recent)


def record_load(rt: Runtime, job: Job, loaded: StepDone) -> None:
    """load_history ended, build_context running: written before the build's failure is.
    If this write fails too (the job gone, Redis down), the build's error says what happened."""
    try:
        rt.lifecycle.advance(job.id, done=loaded.name, detail=loaded.detail,
                             start=StepName.BUILD_CONTEXT, known=job)
    except Exception as exc:
        logger.warning("load_history's end not written before the failure (%s)",
                       type(exc).__name__)


def later_turns(rt: Runtime, job: Job) -> bool:
    """Whether messages of later turns are stored already (submitted while this job ran or
    waited, even if their jobs were cancelled since): they moved the recent window past what
    the build read, so fold_due cannot tell; the summary task's plan decides instead. Turns
    stored after this job's end are judged by their own jobs, which read its reply."""
    try:
        return rt.lifecycle.jobs.turn_counter(job.conversation_id) > job.turn
    except redis.RedisError:  # the end's write will tell; a summary is never missed for it
        return True


def build(rt: Runtime, job: Job, message: Message) -> tuple[BuiltContext, str]:
    """The prompt, and what semantic recall did ("" when embeddings are off)."""
    s = rt.settings
    source = semantic_source(rt)
    built = build_context(store=rt.history, conversation_id=job.conversation_id,
                          new_message=message, persona=rt.persona,
                          max_tokens=s.max_context_tokens, preserve_recent=s.preserve_recent,
                          relevance_threshold=s.relevance_threshold,
                          relevance_floor=s.relevance_floor,
                          sources=[source] if source is not None else [])
    if source is None:
        return built, ""
    rt.metrics.count("semantic_recall", source.outcome)
    return built, source.status


def continuing(built: BuiltContext, so_far: str, *, max_tokens: int) -> BuiltContext:
    """The prompt of a continue: the reply so far as the model's own turn, then the request
    to go on. Only its tail is sent, within a quarter of the context budget, so that a reply
    continued again and again cannot grow the prompt without bound."""
    tail = tail_within(so_far, max_tokens // 4)
    contents = [*built.contents, Turn(role="model", text=tail),
                Turn(role="user", text=CONTINUE_PROMPT)]
    return replace(built, contents=contents,
                   total_tokens=built.total_tokens + count_tokens(tail)
                   + count_tokens(CONTINUE_PROMPT))


def tail_within(text: str, max_tokens: int) -> str:
    if count_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(text)  # the longest suffix within the budget
    while low < high:
        mid = (low + high) // 2
        if count_tokens(text[mid:]) <= max_tokens:
            high = mid
        else:
            low = mid + 1
    return text[low:]


def generate(rt: Runtime, job: Job, built: BuiltContext, text: CoalescedText, *,
             deadline: float) -> str:
    asked = built.contents[-1].text
    if rt.settings.debug_directives and STUCK_DIRECTIVE in asked:
        stuck_in_c()
    if rt.settings.debug_directives and SPIN_DIRECTIVE in asked:
        spin_in_python()
    try:
        reply = rt.llm.stream(system_instruction=built.system_instruction,
                              contents=list(built.contents), deadline=deadline,
                              on_text=text, seed=seed_of(job))
    except BaseException:
        close_before_failure(text)
        raise
    text.stop()  # the end writes the whole text with the reply (else run_chat closes it)
    return reply


def close_before_failure(text: CoalescedText) -> None:
    """Write the pending text before the failure is recorded: an incomplete job keeps all
    of it. A write that fails here (the job gone, Redis down) leaves the original error to
    say what happened."""
    try:
        text.close()
    except Exception as exc:
        logger.warning("pending text not written before the failure (%s)", type(exc).__name__)


def seed_of(job: Job) -> int | None:
    """A regenerate samples with a seed of its own (from its id): another reply than the
    turn's earlier ones, also from a deterministic model such as the simulator."""
    return int(job.id[:8], 16) & 0x7FFF_FFFF or 1 if job.kind is JobKind.REGENERATE else None


def commit_reply(rt: Runtime, job: Job, reply: str, *, last_step: StepDone,
                 known: Job | None = None) -> Message:
    """Store the reply and complete the job in one transaction: a job cancelled or timed out
    a moment before never leaves a reply in the history, and a completed job always has one.
    The same transaction finishes the generate step, runs the save and writes the whole text."""
    message = reply_message(job, reply, tokens_of=count_tokens, at=iso(utcnow()))
    ended = rt.lifecycle.end(job.id, Outcome.completed(message, generated=reply,
                                                       last_step=last_step), known=known)
    if ended is None:
        raise JobGone(job.id)
    return message


def spin_in_python() -> None:
    """Test aid (MYSISTERDB_DEBUG_DIRECTIVES only): a loop in Python that never ends by
    itself, like an infinite loop in our own code; the soft limit interrupts it."""
    logger.warning("debug directive: looping in Python until the soft time limit")
    while True:
        time.sleep(0.01)


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
