from __future__ import annotations

from context.fusion import RRF_K, reciprocal_rank_fusion
from context.types import ScoredMessage
from tests.context.chatgen import make_message


def _ranking(*pairs: tuple[int, float]) -> list[ScoredMessage]:
    return [ScoredMessage(make_message(seq, "user", f"m{seq}"), score) for seq, score in pairs]


def test_rrf_sums_reciprocal_ranks_across_sources() -> None:
    lexical = _ranking((1, 0.9), (2, 0.5), (3, 0.2))
    semantic = _ranking((3, 0.8), (4, 0.7), (1, 0.1))
    fused = reciprocal_rank_fusion([lexical, semantic], limit=10)
    # 1: 1/61 + 1/63; 3: 1/63 + 1/61 (a tie, the newer first); 2: 1/62; 4: 1/62.
    assert [s.message.seq for s in fused] == [3, 1, 4, 2]
    # Each message keeps the best score a source gave it.
    assert {s.message.seq: s.score for s in fused} == {1: 0.9, 2: 0.5, 3: 0.8, 4: 0.7}


def test_rrf_single_ranking_keeps_its_order_and_limit_applies() -> None:
    ranking = _ranking((5, 0.3), (9, 0.9), (7, 0.5))
    assert reciprocal_rank_fusion([ranking], limit=2) == ranking[:2]
    assert reciprocal_rank_fusion([], limit=5) == []


def test_rrf_found_by_both_sources_beats_a_single_top_rank_with_the_usual_k() -> None:
    a = _ranking((1, 1.0), *((100 + i, 0.1) for i in range(5)), (2, 0.5))
    b = _ranking(*((200 + i, 0.1) for i in range(5)), (2, 0.5), (1, 0.1))
    # k = 60: 2 (7th and 6th) beats 200 (1st of b only); with k = 1 the top rank wins.
    assert [s.message.seq for s in reciprocal_rank_fusion([a, b], limit=2)] == [1, 2]
    assert [s.message.seq for s in reciprocal_rank_fusion([a, b], limit=2, k=1)] == [1, 200]
    assert RRF_K == 60
