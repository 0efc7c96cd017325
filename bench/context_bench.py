"""Time build_context against histories of 100 .. 100,000 stored messages (Redis store).

Run:  .venv/bin/python bench/context_bench.py [--sizes 100,1000,10000,100000] [--runs 60]
                                             [--semantic] [--scan 250,1000,4000]

Starts a private redis-server (mysisterdb.redis_server.start_redis) and stops it at the end.
One conversation grows through the sizes; at each size the same set of queries (chat-like
sentences plus the planted-fact question) is built `runs` times in turn, and the median and
95th percentile of one build are printed.  Timing only: nothing here asserts.

With --semantic, every message also gets a 768-dim vector (random, stored quantized as the
worker stores Gemini's) and each size is timed again with a SemanticSource (query vectors
given, no HTTP: the scan and the fusion only), once per `--scan` cap on the vectors read.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import redis

# The synthetic chat generator lives with the tests; run from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from context.builder import BuiltContext, build_context  # noqa: E402
from context.fusion import CandidateSource  # noqa: E402
from context.redis_store import RedisHistoryStore  # noqa: E402
from context.vectors import RedisVectorStore, SemanticSource  # noqa: E402
from core import keys  # noqa: E402
from mysisterdb.redis_server import start_redis  # noqa: E402
from tests.context.chatgen import ChatGenerator, make_message  # noqa: E402

logger = logging.getLogger(__name__)

CID = "bench"
PERSONA = ("あなたはユーザーの妹「ミナ」です。明るく、敬語は使わずに、ユーザーを「お兄ちゃん」"
           "と呼んで話します。わからないことは正直にわからないと言います。")
FACT_SEQ = 51
FACT = "枡元さんの誕生日は3月12日だよ"
FACT_QUERY = "枡元さんの誕生日いつだっけ？"


def _load(store: RedisHistoryStore, generator: ChatGenerator, *, start: int, end: int) -> None:
    """Store messages with seq in [start, end), the planted fact at FACT_SEQ."""
    batch = []
    for seq, message in zip(range(start, end), generator.messages(end - start, first_seq=start),
                            strict=True):
        batch.append(make_message(seq, "user", FACT) if seq == FACT_SEQ else message)
    store.append_many(CID, batch)


def _queries(count: int) -> list[str]:
    generator = ChatGenerator(seed=99)
    return [FACT_QUERY, *(generator.text("user") for _ in range(count - 1))]


def _time_builds(
    store: RedisHistoryStore, queries: list[str], *, next_seq: int, runs: int,
    sources: list[CandidateSource] | None = None,
) -> tuple[list[float], BuiltContext]:
    timings: list[float] = []
    built = None
    messages = [make_message(next_seq, "user", q) for q in queries]
    for i in range(runs):
        started = time.perf_counter()
        built = build_context(store=store, conversation_id=CID,
                              new_message=messages[i % len(messages)], persona=PERSONA,
                              sources=sources or [])
        timings.append((time.perf_counter() - started) * 1000)
    assert built is not None
    fact_built = build_context(store=store, conversation_id=CID, new_message=messages[0],
                               persona=PERSONA)
    return timings, fact_built


VECTOR_DIM = 768  # MYSISTERDB_GEMINI_EMBEDDING_DIM's default


def _load_vectors(vectors: RedisVectorStore, rng: np.random.Generator, *, start: int,
                  end: int) -> None:
    for first in range(start, end, 1000):
        seqs = range(first, min(first + 1000, end))
        block = rng.standard_normal((len(seqs), VECTOR_DIM)).astype(np.float32)
        vectors.store(CID, zip(seqs, block.tolist(), strict=True))


def _semantic_row(store: RedisHistoryStore, vectors: RedisVectorStore, queries: list[str], *,
                  size: int, runs: int, scans: list[int]) -> str:
    query = np.random.default_rng(7).standard_normal(VECTOR_DIM).tolist()
    cells = []
    for scan in scans:
        # min_similarity -1: every scanned vector is a candidate (the worst case for fusion).
        source = SemanticSource(vectors=vectors, history=store, embed_query=lambda _q: query,
                                scan_max=scan, min_similarity=-1.0)
        _time_builds(store, queries, next_seq=size + 1, runs=len(queries), sources=[source])
        timings, _ = _time_builds(store, queries, next_seq=size + 1, runs=runs,
                                  sources=[source])
        cells.append(f"{statistics.median(timings):>8.2f}")
    return " ".join(cells)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--semantic", action="store_true",
                        help="also time builds with a semantic source over stored vectors")
    parser.add_argument("--scan", default="250,1000,4000", help="vectors scanned per build")
    args = parser.parse_args()
    scans = [int(s) for s in args.scan.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    server = start_redis()
    try:
        client = redis.Redis(host=server.host, port=server.port, decode_responses=False)
        store = RedisHistoryStore(client, key_of=keys.conv_key)
        generator = ChatGenerator(seed=1)
        queries = _queries(12)
        print(f"machine: {_machine()}")
        print(f"{'messages':>9} {'load s':>7} {'median ms':>10} {'p95 ms':>8}  prompt (fact query)")
        medians: dict[int, float] = {}
        semantic_rows: list[str] = []
        vectors = RedisVectorStore(client, key_of=keys.conv_key)
        rng = np.random.default_rng(3)
        loaded = 0
        for size in sizes:
            started = time.perf_counter()
            _load(store, generator, start=loaded + 1, end=size + 1)
            load_s = time.perf_counter() - started
            if args.semantic:
                _load_vectors(vectors, rng, start=loaded + 1, end=size + 1)
                semantic_rows.append(f"{size:>9} " + _semantic_row(
                    store, vectors, queries, size=size, runs=args.runs, scans=scans))
            loaded = size
            _time_builds(store, queries, next_seq=size + 1, runs=len(queries))  # warm-up
            timings, fact = _time_builds(store, queries, next_seq=size + 1, runs=args.runs)
            medians[size] = statistics.median(timings)
            p95 = statistics.quantiles(timings, n=20)[-1]
            recalled = "fact recalled" if FACT in fact.system_instruction else "fact NOT recalled"
            print(f"{size:>9} {load_s:>7.1f} {medians[size]:>10.2f} {p95:>8.2f}  "
                  f"{fact.describe()}; {recalled}")
        if 1000 in medians and 100000 in medians:
            print(f"ratio 100k/1k: {medians[100000] / medians[1000]:.2f}")
        if semantic_rows:
            print("\nwith a semantic source (768-dim int8 vectors; median ms of one build):")
            print(f"{'messages':>9} " + " ".join(f"{'scan ' + str(s):>8}" for s in scans))
            print("\n".join(semantic_rows))
        memory = client.info("memory")["used_memory_human"]
        print(f"redis used_memory: {memory}")
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
