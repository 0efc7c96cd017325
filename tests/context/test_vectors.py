"""Semantic recall's storage and search: int8 quantization, the bounded scan, the source."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
import redis

from context.builder import build_context, newer_first
from context.fusion import reciprocal_rank_fusion
from context.redis_store import RedisHistoryStore
from context.types import ScoredMessage
from context.vectors import (
    HEADER_BYTES,
    RedisVectorStore,
    SemanticSource,
    dequantize,
    pack,
    quantize,
    similarities,
    top_matches,
    unpack,
)
from core import keys
from tests.context.chatgen import ChatGenerator, make_message

DIM = 64
PERSONA = "あなたはユーザーの妹です。"


def _unit(rng: random.Random, dim: int = DIM) -> list[float]:
    values = np.array([rng.gauss(0.0, 1.0) for _ in range(dim)])
    return list(values / np.linalg.norm(values))


def _near(vector: Sequence[float], rng: random.Random, noise: float) -> list[float]:
    """A vector at cosine ~1/sqrt(1 + noise²) from `vector`."""
    spread = noise / np.sqrt(len(vector))
    values = np.asarray(vector) + spread * np.array([rng.gauss(0.0, 1.0) for _ in vector])
    return list(values / np.linalg.norm(values))


def _stores(client: redis.Redis) -> tuple[RedisHistoryStore, RedisVectorStore]:
    return (RedisHistoryStore(client, key_of=keys.conv_key),
            RedisVectorStore(client, key_of=keys.conv_key))


@pytest.mark.parametrize("dim", [64, 256, 768, 3072])
def test_quantized_cosine_is_within_a_hundredth_of_the_exact_one(dim: int) -> None:
    rng = random.Random(dim)
    for _ in range(20):
        a, b = _unit(rng, dim), _unit(rng, dim)
        b = _near(a, rng, rng.choice([0.1, 0.5, 2.0]))
        exact = float(np.dot(a, b))
        _, cosines = similarities([pack(1, a)], b)
        assert abs(float(cosines[0]) - exact) < 0.01
        assert float(np.linalg.norm(dequantize(pack(1, a)))) == pytest.approx(1.0, abs=0.01)


def test_pack_keeps_seq_and_takes_one_byte_per_dimension() -> None:
    vector = [3.0, -4.0, 0.0, 0.0]  # not normalised: quantize normalises first
    raw = pack(2 ** 40 + 7, vector)
    seq, scale, values = unpack(raw)
    assert seq == 2 ** 40 + 7
    assert len(raw) == HEADER_BYTES + 4
    assert values.tolist() == [95, -127, 0, 0]  # 0.6 and -0.8 on the -127..127 scale
    assert scale == pytest.approx(0.8 / 127)


def test_zero_vector_quantizes_to_zeros_and_matches_nothing() -> None:
    scale, values = quantize([0.0] * 8)
    assert scale == 0.0 and not values.any()
    seqs, cosines = similarities([pack(1, [1.0] * 8)], [0.0] * 8)
    assert seqs == [] and len(cosines) == 0


def test_vectors_of_another_dimension_are_skipped() -> None:
    rng = random.Random(1)
    query = _unit(rng)
    seqs, _ = similarities([pack(1, query), pack(2, _unit(rng, DIM * 2))], query)
    assert seqs == [1]


def test_top_matches_are_best_first_above_the_floor_newer_on_ties() -> None:
    ranked = top_matches([1, 2, 3, 4], np.array([0.7, 0.9, 0.7, 0.2]), limit=3,
                         min_similarity=0.5)
    assert [seq for seq, _ in ranked] == [2, 3, 1]
    assert top_matches([1, 2], np.array([0.9, 0.8]), limit=1, min_similarity=0.0)[0][0] == 1


def test_store_skips_embedded_seqs_and_deleted_conversations(redis_client: redis.Redis) -> None:
    history, vectors = _stores(redis_client)
    rng = random.Random(2)
    first = _unit(rng)
    assert vectors.store("gone", [(1, first)]) == 0  # no messages: nothing left behind
    assert not redis_client.exists(vectors.key("gone"))
    history.append_many("c", [make_message(s, "user", f"m{s}") for s in range(1, 6)])
    assert vectors.store("c", [(1, first), (2, _unit(rng))]) == 2
    assert vectors.store("c", [(1, _unit(rng)), (3, _unit(rng))]) == 1  # seq 1 kept as it was
    assert vectors.count("c") == 3
    assert dequantize(vectors.newest("c", before_seq=2, limit=5)[0]) == pytest.approx(
        first, abs=0.02)
    assert vectors.embedded_seqs("c", after_seq=1, before_seq=4) == {2, 3}


def test_reset_and_delete_take_the_vectors_with_the_conversation(
        redis_client: redis.Redis) -> None:
    history, vectors = _stores(redis_client)
    history.append_many("c", [make_message(1, "user", "m1")])
    vectors.store("c", [(1, _unit(random.Random(3)))])
    with redis_client.pipeline() as pipe:
        assert vectors.key("c") in history.conversation_keys("c", watching=pipe)
    history.reset("c")
    assert not redis_client.exists(vectors.key("c"))


class _Embedder:
    def __init__(self, vector: Sequence[float] | None) -> None:
        self.vector = vector
        self.calls = 0

    def __call__(self, text: str) -> Sequence[float] | None:
        self.calls += 1
        return self.vector


def _planted(client: redis.Redis, *, messages: int, fact_seq: int,
             fact: list[float]) -> tuple[RedisHistoryStore, RedisVectorStore]:
    """`messages` chat messages with random vectors; the one at fact_seq gets `fact`."""
    history, vectors = _stores(client)
    rng = random.Random(4)
    history.append_many("c", list(ChatGenerator(seed=4).messages(messages, first_seq=1)))
    vectors.store("c", [(seq, fact if seq == fact_seq else _unit(rng))
                        for seq in range(1, messages + 1)])
    return history, vectors


def test_scan_reads_only_the_newest_scan_max_vectors(redis_client: redis.Redis) -> None:
    rng = random.Random(5)
    meaning = _unit(rng)
    history, vectors = _planted(redis_client, messages=600, fact_seq=300, fact=meaning)
    query = _near(meaning, rng, 0.3)
    source = SemanticSource(vectors=vectors, history=history, embed_query=_Embedder(query),
                            scan_max=120, min_similarity=0.6)
    found = source.candidates(conversation_id="c", query="q", before_seq=400, limit=10)
    assert [c.message.seq for c in found] == [300]
    assert source.status == "1 of 120 vectors" and source.outcome == "used"
    # The same fact, more than 120 messages before the window, is out of reach: the cap.
    older = source.candidates(conversation_id="c", query="q", before_seq=590, limit=10)
    assert source.status == "0 of 120 vectors" and older == []


def test_no_vectors_means_no_query_embedding_and_none_means_lexical_only(
        redis_client: redis.Redis) -> None:
    history, vectors = _stores(redis_client)
    history.append_many("c", [make_message(1, "user", "m1")])
    asked = _Embedder([1.0] * DIM)
    source = SemanticSource(vectors=vectors, history=history, embed_query=asked)
    assert source.candidates(conversation_id="c", query="q", before_seq=5, limit=5) == []
    assert asked.calls == 0 and source.outcome == "no_vectors"
    vectors.store("c", [(1, [1.0] * DIM)])
    failing = SemanticSource(vectors=vectors, history=history, embed_query=_Embedder(None))
    assert failing.candidates(conversation_id="c", query="q", before_seq=5, limit=5) == []
    assert failing.outcome == "lexical_only"


def test_semantic_candidate_is_recalled_within_the_budget(redis_client: redis.Redis) -> None:
    rng = random.Random(6)
    meaning = _unit(rng)
    history, vectors = _planted(redis_client, messages=600, fact_seq=40, fact=meaning)
    fact = history.get_many("c", [40])[0]
    question = make_message(601, "user", "ぜんぜん関係ない言葉だけの質問")
    history.append("c", question)
    lexical = build_context(store=history, conversation_id="c", new_message=question,
                            persona=PERSONA, max_tokens=600)
    assert 40 not in lexical.detail["recalled_seqs"]
    source = SemanticSource(vectors=vectors, history=history,
                            embed_query=_Embedder(_near(meaning, rng, 0.3)), scan_max=1000)
    built = build_context(store=history, conversation_id="c", new_message=question,
                          persona=PERSONA, max_tokens=600, sources=[source])
    assert 40 in built.detail["recalled_seqs"] and fact.text in built.system_instruction
    assert built.total_tokens <= 600


def test_fusion_keeps_the_lexical_superseded_mark_over_a_better_semantic_score() -> None:
    old, new = make_message(3, "user", "PIN 1111"), make_message(9, "user", "PIN 2222")
    lexical = [ScoredMessage(new, 0.9), ScoredMessage(old, 0.8, superseded_by=9)]
    semantic = [ScoredMessage(old, 0.95)]
    fused = {s.message.seq: s for s in reciprocal_rank_fusion([lexical, semantic], limit=5)}
    assert fused[3].superseded_by == 9 and fused[3].score == 0.95


def test_fused_order_puts_a_superseded_message_after_the_one_that_replaced_it() -> None:
    old, new = make_message(3, "user", "PIN 1111"), make_message(9, "user", "PIN 2222")
    newest = make_message(15, "user", "PIN 3333")
    other = make_message(5, "user", "猫の名前はモカ")
    fused = [ScoredMessage(old, 0.9, superseded_by=9), ScoredMessage(other, 0.8),
             ScoredMessage(new, 0.7, superseded_by=15), ScoredMessage(newest, 0.6)]
    assert [c.message.seq for c in newer_first(fused)] == [5, 15, 9, 3]


def test_semantic_ranking_above_the_newer_version_still_recalls_both(
        redis_client: redis.Redis) -> None:
    history, vectors = _stores(redis_client)
    history.append_many("c", [
        make_message(1, "user", "銀行の暗証番号は4821にした"), make_message(2, "assistant", "了解"),
        *ChatGenerator(seed=8).messages(40, first_seq=3),
        make_message(43, "user", "暗証番号、7356に変えたよ"), make_message(44, "assistant", "了解"),
        *ChatGenerator(seed=9).messages(20, first_seq=45)])
    question = make_message(65, "user", "銀行の暗証番号なんだっけ？")
    history.append("c", question)
    rng = random.Random(7)
    meaning = _unit(rng)
    vectors.store("c", [(1, meaning)])  # only the old version is near the question
    source = SemanticSource(vectors=vectors, history=history, embed_query=_Embedder(meaning))
    built = build_context(store=history, conversation_id="c", new_message=question,
                          persona=PERSONA, sources=[source])
    assert {1, 43} <= set(built.detail["recalled_seqs"])  # the newer one must come back
