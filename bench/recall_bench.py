"""Recall benchmark: planted facts asked back at the end of long chats, through the real pipeline.

Run:  .venv/bin/python bench/recall_bench.py [--seeds 1] [--timing-runs 5]
                                            [--modes lexical,semantic]

Starts its own redis-server and a stack like the tests' (simulator, Celery worker in
prefork, API; tests/conftest.py start_stack).  For every question of bench/recall_set.py,
a fresh conversation gets the whole planted history (TURNS exchanges, stored through
RedisHistoryStore: the same storing and indexing code the API and the worker use), then
the question is submitted to POST /api/chat and the prompt the simulator received (through
the real google-generativeai SDK) is searched for the fact.  Printed: recall by kind,
prompt tokens (stored-count estimate from the job, and a re-tokenised count of what the
simulator received), the build_context step's duration in the job, and the median of
in-process builds of the same prompt.  Timing and counting only: nothing here asserts.

Modes: `lexical` is the default stack (MYSISTERDB_EMBEDDINGS=auto without a key: off);
`semantic` runs the same questions on a stack with MYSISTERDB_EMBEDDINGS=on against the
simulator's embeddings, after the planted history was embedded by the backfill task
(`reindex --embeddings`' task, through the worker and the real SDK).  The simulator's
embeddings know only a small concept table written with this set's paraphrases in view
(mysisterdb/simulator.py CONCEPTS): the semantic figure shows the pipeline (storage,
bounded scan, fusion, budget) carrying a paraphrase through, not what Gemini's embeddings
would recall.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.recall_set import CONVERSATION_SET, TURNS, Conversation, Fact, exchanges  # noqa: E402
from context.builder import build_context  # noqa: E402
from context.fusion import CandidateSource  # noqa: E402
from context.redis_store import RedisHistoryStore  # noqa: E402
from context.tokens import count_tokens  # noqa: E402
from context.vectors import SemanticSource  # noqa: E402
from core import keys  # noqa: E402
from core.history import vector_store  # noqa: E402
from core.ports import EMBED_TASK  # noqa: E402
from core.settings import Settings  # noqa: E402
from mysisterdb.redis_server import start_redis  # noqa: E402
from mysisterdb.simulator import embed_text  # noqa: E402
from taskqueue.app import create_celery  # noqa: E402
from tests.conftest import start_stack  # noqa: E402
from tests.context.chatgen import make_message  # noqa: E402
from tests.procs import Stack, wait_for  # noqa: E402

logger = logging.getLogger(__name__)

KINDS = ("anchored", "english", "paraphrase", "updated")
MODES = ("lexical", "semantic")
THRESHOLD = Settings().relevance_threshold
TURN_OVERHEAD = 4  # context.builder.TURN_OVERHEAD_TOKENS, per content and system instruction


@dataclass
class Outcome:
    fact: Fact
    recalled: bool
    older_recalled: bool
    job_tokens: int
    sent_tokens: int
    max_tokens: int
    step_ms: float
    build_ms: float
    detail: str
    fact_rank: int | None  # 1-based rank among the recall candidates (None: not a candidate)
    fact_score: float


def history_store(client: redis.Redis) -> RedisHistoryStore:
    return RedisHistoryStore(client, key_of=keys.conv_key)


def plant(client: redis.Redis, cid: str, conversation: Conversation, *, seed: int) -> None:
    """The whole planted history, as if typed long ago (turn counter set past it)."""
    messages = []
    for turn, (user, reply) in enumerate(exchanges(conversation, seed=seed), start=1):
        messages.append(make_message(2 * turn - 1, "user", user))
        messages.append(make_message(2 * turn, "assistant", reply))
    history_store(client).append_many(cid, messages)
    client.set(keys.conv_turn(cid), TURNS)
    client.sadd(keys.conversations(), cid)


def prompt_texts(body: dict[str, Any]) -> list[str]:
    system = [p["text"] for p in body.get("systemInstruction", {}).get("parts", [])]
    return system + [p["text"] for c in body["contents"] for p in c["parts"]]


def _ms_between(step: dict[str, Any]) -> float:
    started = datetime.fromisoformat(step["started_at"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(step["completed_at"].replace("Z", "+00:00"))
    return (ended - started).total_seconds() * 1000


def semantic_source(client: redis.Redis, question: str, settings: Settings) -> SemanticSource:
    """The worker's source, with the question's vector computed once beforehand (the
    simulator's function, the same vector its endpoint answers): times the scan, not HTTP."""
    vector = embed_text(question, settings.gemini_embedding_dim)
    return SemanticSource(vectors=vector_store(client), history=history_store(client),
                          embed_query=lambda _text: vector,
                          scan_max=settings.embedding_scan_max,
                          min_similarity=settings.embedding_min_similarity)


def _build_ms(client: redis.Redis, cid: str, question: str, settings: Settings,
              runs: int, *, semantic: bool) -> float:
    store = history_store(client)
    question_seq = 2 * TURNS + 1
    new = store.between(cid, after_seq=question_seq - 1, before_seq=question_seq + 1, limit=1)[0]
    assert new.text == question
    timings = []
    sources: list[CandidateSource] = (
        [semantic_source(client, question, settings)] if semantic else [])
    for _ in range(runs):
        started = time.perf_counter()
        build_context(store=store, conversation_id=cid, new_message=new,
                      persona=settings.persona_text(), max_tokens=settings.max_context_tokens,
                      preserve_recent=settings.preserve_recent,
                      relevance_threshold=settings.relevance_threshold,
                      relevance_floor=settings.relevance_floor, sources=sources)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def _fact_rank(client: redis.Redis, cid: str, fact: Fact, settings: Settings) -> tuple[int | None, float]:
    """Where the fact stands in the lexical ranking the build starts from."""
    hits = history_store(client).search(cid, query=fact.question, before_seq=2 * TURNS + 1,
                                        limit=64, threshold=settings.relevance_floor)
    for rank, hit in enumerate(hits, start=1):
        if hit.message.text == fact.expected:
            return rank, hit.score
    return None, 0.0


def embed_planted(stack: Stack, client: redis.Redis, cid: str) -> None:
    """The backfill task `mysisterdb reindex --embeddings` queues, run by the stack's worker."""
    app = create_celery(Settings(redis_url=stack.redis_url))
    app.send_task(EMBED_TASK, args=[cid, "", 0])
    wait_for(lambda: vector_store(client).count(cid) >= 2 * TURNS, timeout_s=120,
             what=f"the embeddings of {cid}")


def ask(stack: Stack, client: redis.Redis, conversation: Conversation, fact: Fact, *,
        seed: int, settings: Settings, timing_runs: int, semantic: bool) -> Outcome:
    cid = f"recall-{conversation.name}-{uuid.uuid4().hex[:8]}"
    plant(client, cid, conversation, seed=seed)
    if semantic:
        embed_planted(stack, client, cid)
    job = stack.wait_job(stack.submit(fact.question, conversation_id=cid)["id"], timeout_s=60)
    if job["status"] != "completed":
        raise RuntimeError(f"job for {fact.question!r} ended {job['status']}: {job['error']}")
    body = stack.sim_requests_asking(fact.question)[-1]
    texts = prompt_texts(body)
    prompt = "\n".join(texts)
    build_step = job["steps"][1]
    detail = str(build_step["detail"])
    older = fact.statements[0][1] if len(fact.statements) > 1 else ""
    rank, score = _fact_rank(client, cid, fact, settings)
    return Outcome(fact_rank=rank, fact_score=score,
        fact=fact, recalled=fact.expected in prompt, older_recalled=bool(older) and older in prompt,
        job_tokens=int(re.search(r"(\d+) tokens", detail).group(1)),  # type: ignore[union-attr]
        sent_tokens=sum(count_tokens(t) for t in texts) + TURN_OVERHEAD * len(texts),
        max_tokens=settings.max_context_tokens, step_ms=_ms_between(build_step),
        build_ms=_build_ms(client, cid, fact.question, settings, timing_runs, semantic=semantic),
        detail=detail)


def report(outcomes: list[Outcome]) -> None:
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_kind[outcome.fact.kind].append(outcome)
    print(f"{'kind':<11} {'recalled':>9} {'recall':>7}  {'confident':>9}  {'median rank':>11}")
    for kind in KINDS:
        group = by_kind.get(kind, [])
        hits = sum(o.recalled for o in group)
        confident = sum(o.fact_score >= THRESHOLD for o in group)
        ranks = [o.fact_rank for o in group if o.fact_rank is not None]
        rank = f"{statistics.median(ranks):.0f}" if ranks else "-"
        print(f"{kind:<11} {hits:>4}/{len(group):<4} {100 * hits / max(len(group), 1):>6.0f}%  "
              f"{confident:>4}/{len(group):<4}  {rank:>11}")
    print("(confident: the fact scored >= the threshold; rank: its place among the recall "
          "candidates)")
    updated = by_kind.get("updated", [])
    print(f"updated: older statement also in the prompt {sum(o.older_recalled for o in updated)}"
          f"/{len(updated)}")
    job_tokens = [o.job_tokens for o in outcomes]
    sent = [o.sent_tokens for o in outcomes]
    over = sum(o.job_tokens > o.max_tokens or o.sent_tokens > o.max_tokens for o in outcomes)
    print(f"prompt tokens (job estimate): median {statistics.median(job_tokens):.0f}, "
          f"min {min(job_tokens)}, max {max(job_tokens)} of {outcomes[0].max_tokens}; "
          f"re-tokenised as sent: max {max(sent)}; prompts over budget: {over}")
    print(f"build_context step in the job: median {statistics.median(o.step_ms for o in outcomes):.1f} ms, "
          f"max {max(o.step_ms for o in outcomes):.1f} ms")
    print(f"in-process build (same store, same prompt): median "
          f"{statistics.median(o.build_ms for o in outcomes):.2f} ms, "
          f"max {max(o.build_ms for o in outcomes):.2f} ms")
    missed = [o for o in outcomes if not o.recalled]
    for o in missed:
        print(f"  missed [{o.fact.kind}] {o.fact.question!r} -> {o.fact.expected!r} ({o.detail})")


def run_mode(server_url: str, mode: str, *, seeds: int, timing_runs: int,
             settings: Settings) -> list[Outcome]:
    semantic = mode == "semantic"
    extra = {"MYSISTERDB_EMBEDDINGS": "on" if semantic else "off"}
    with tempfile.TemporaryDirectory(prefix="recall-bench-") as tmp:
        stack = start_stack(redis_url=server_url, log_dir=Path(tmp), extra=extra)
        client = redis.Redis.from_url(server_url, socket_timeout=10)
        try:
            return [ask(stack, client, conversation, fact, seed=seed, settings=settings,
                        timing_runs=timing_runs, semantic=semantic)
                    for seed in range(1, seeds + 1)
                    for conversation in CONVERSATION_SET for fact in conversation.facts]
        finally:
            client.close()
            stack.stop()


def compare(results: dict[str, list[Outcome]]) -> None:
    print("\nrecall by kind and mode (the semantic mode uses the simulator's toy embeddings):")
    print(f"{'kind':<11} " + " ".join(f"{mode:>14}" for mode in results))
    for kind in KINDS:
        cells = []
        for outcomes in results.values():
            group = [o for o in outcomes if o.fact.kind == kind]
            cells.append(f"{sum(o.recalled for o in group):>4}/{len(group):<3} "
                         f"({100 * sum(o.recalled for o in group) / max(len(group), 1):>3.0f}%)")
        print(f"{kind:<11} " + " ".join(f"{c:>14}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=1, help="filler seeds per conversation")
    parser.add_argument("--timing-runs", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES), help="lexical, semantic or both")
    args = parser.parse_args()
    server = start_redis()
    settings = Settings()
    results: dict[str, list[Outcome]] = {}
    try:
        for number, mode in enumerate(args.modes.split(",")):
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; one of {MODES}")
            # Each mode in its own database: the other stack's worker is gone, its data too.
            url = f"redis://{server.host}:{server.port}/{number}"
            results[mode] = run_mode(url, mode, seeds=args.seeds, timing_runs=args.timing_runs,
                                     settings=settings)
            print(f"\n== {mode}: {len(CONVERSATION_SET)} conversations x {TURNS} exchanges x "
                  f"{args.seeds} seed(s), {len(results[mode])} questions; budget "
                  f"{settings.max_context_tokens} tokens, threshold {settings.relevance_threshold}, "
                  f"floor {settings.relevance_floor}"
                  + (f", scan {settings.embedding_scan_max} vectors, min cosine "
                     f"{settings.embedding_min_similarity}" if mode == "semantic" else ""))
            report(results[mode])
        if len(results) > 1:
            compare(results)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
