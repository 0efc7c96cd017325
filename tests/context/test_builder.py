from __future__ import annotations

import pytest

from context.builder import (
    RECALL_HEADER,
    SUMMARY_HEADER,
    TURN_OVERHEAD_TOKENS,
    BuiltContext,
    MessageTooLargeError,
    build_context,
    max_message_tokens,
    message_fits,
    persona_tokens,
)
from context.memory_store import InMemoryHistoryStore
from context.tokens import count_tokens
from context.types import ScoredMessage, Summary, Turn
from tests.context.chatgen import ChatGenerator, make_message

PERSONA = "あなたはユーザーの妹「ミナ」です。明るく、敬語は使わずに話します。"
QUERY = "枡元さんの誕生日いつだっけ？"
FACT = "枡元さんの誕生日は3月12日だよ"


def _exchanges(store: InMemoryHistoryStore, count: int, *, first_seq: int = 1) -> int:
    """Store `count` user/assistant exchanges; returns the next free seq."""
    for message in ChatGenerator(seed=first_seq).messages(2 * count, first_seq=first_seq):
        store.append("c", message)
    return first_seq + 2 * count


def _build(
    store: InMemoryHistoryStore, text: str, seq: int, *, max_tokens: int = 4000,
    relevance_threshold: float = 0.4,
) -> BuiltContext:
    return build_context(store=store, conversation_id="c",
                         new_message=make_message(seq, "user", text), persona=PERSONA,
                         max_tokens=max_tokens, relevance_threshold=relevance_threshold)


def test_empty_history_gives_persona_and_the_new_message() -> None:
    built = _build(InMemoryHistoryStore(), "こんにちは", 1)
    assert built.system_instruction == PERSONA
    assert built.contents == [Turn(role="user", text="こんにちは")]
    assert built.detail == {"kept_recent": 0, "dropped_recent": 0, "recalled": 0,
                            "recalled_seqs": [], "recalled_confident": 0, "summary_used": False,
                            "prompt_tokens": built.total_tokens, "max_tokens": 4000}
    assert built.total_tokens == (persona_tokens(PERSONA) + count_tokens("こんにちは")
                                  + 2 * TURN_OVERHEAD_TOKENS)
    assert built.describe() == f"recent 0, recalled 0, summary no, {built.total_tokens} tokens"


def test_last_three_exchanges_are_kept_verbatim_in_order() -> None:
    store = InMemoryHistoryStore()
    next_seq = _exchanges(store, 10)
    built = _build(store, "ねえ聞いて", next_seq)
    recent = store.last("c", limit=6)
    assert built.contents[:-1] == [
        Turn(role="user" if m.role == "user" else "model", text=m.text) for m in recent]
    assert built.contents[-1] == Turn(role="user", text="ねえ聞いて")
    assert built.detail["kept_recent"] == 6


def test_later_messages_do_not_leak_into_an_earlier_prompt() -> None:
    store = InMemoryHistoryStore()
    _exchanges(store, 5)  # seqs 1..10
    store.append("c", make_message(12, "user", "これは未来のメッセージ"))
    built = _build(store, "今の質問", 11)
    texts = [t.text for t in built.contents] + [built.system_instruction]
    assert not any("未来" in text for text in texts)
    assert built.contents[-2].text == store.before("c", before_seq=11, limit=1)[0].text


def test_old_relevant_turn_is_recalled_and_labelled_in_the_system_instruction() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", FACT))
    store.append("c", make_message(2, "assistant", "覚えておくね！"))
    next_seq = _exchanges(store, 300, first_seq=3)
    built = _build(store, QUERY, next_seq)
    # Other people's birthdays in the filler may come back too (topically close); the fact
    # is the oldest message, so it opens the recalled block.
    assert built.detail["recalled_seqs"][0] == 1  # type: ignore[index]
    assert RECALL_HEADER + "ユーザー: " + FACT in built.system_instruction
    assert built.system_instruction.startswith(PERSONA)


def test_prompt_order_persona_summary_recalled_recent_new() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", FACT))
    next_seq = _exchanges(store, 20, first_seq=2)
    summary_text = "お兄ちゃんは京都旅行の計画を立てている。"
    store.set_summary("c", Summary(text=summary_text, covers_up_to_seq=30,
                                   tokens=count_tokens(summary_text)))
    built = _build(store, QUERY, next_seq)
    system = built.system_instruction
    assert system.index(PERSONA) < system.index(SUMMARY_HEADER) < system.index(RECALL_HEADER)
    # The fact, then other birthdays from the filler filling the budget.
    assert built.detail["summary_used"] is True and 1 in built.detail["recalled_seqs"]  # type: ignore[operator]
    assert built.contents[-1].text == QUERY
    assert "summary yes" in built.describe()


def test_summary_written_after_the_message_is_not_used() -> None:
    store = InMemoryHistoryStore()
    next_seq = _exchanges(store, 5)
    store.set_summary("c", Summary(text="未来の要約", covers_up_to_seq=next_seq, tokens=5))
    assert _build(store, "やあ", next_seq).detail["summary_used"] is False


def test_irrelevant_old_turns_are_left_out() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "昨日は量子力学の本を読んだ"))
    for seq, text in enumerate(["雨がやまないね", "傘を持っていってね", "駅まで走った",
                                "風邪ひかないでね", "ただいま", "おかえり！"], start=2):
        store.append("c", make_message(seq, "user" if seq % 2 == 0 else "assistant", text))
    built = _build(store, QUERY, 8)
    # Nothing shares a word with the question: no budget filling below the floor either.
    assert built.detail["recalled"] == 0
    assert RECALL_HEADER not in built.system_instruction
    # Among filler that does share words (other people's birthdays), it stays out.
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "昨日は量子力学の本を読んだ"))
    next_seq = _exchanges(store, 10, first_seq=2)
    assert 1 not in _build(store, QUERY, next_seq).detail["recalled_seqs"]  # type: ignore[operator]


def _build_floor(store: InMemoryHistoryStore, text: str, seq: int, *, threshold: float,
                 floor: float) -> BuiltContext:
    return build_context(store=store, conversation_id="c",
                         new_message=make_message(seq, "user", text), persona=PERSONA,
                         relevance_threshold=threshold, relevance_floor=floor)


def test_threshold_marks_confident_matches_and_the_floor_bounds_filling() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "京都でラーメンを食べた"))
    store.append("c", make_message(2, "user", "京都に行きたい"))
    next_seq = _exchanges(store, 3, first_seq=3)
    query = "京都のラーメン屋さん"
    # 1 has every known term of the question (屋 is in no message, so it does not count):
    # 1.0; 2 has only 京都: about 0.3.
    filled = _build_floor(store, query, next_seq, threshold=0.5, floor=0.1)
    assert filled.detail["recalled_seqs"] == [1, 2] and filled.detail["recalled_confident"] == 1
    loose = _build_floor(store, query, next_seq, threshold=0.2, floor=0.1)
    assert loose.detail["recalled_seqs"] == [1, 2] and loose.detail["recalled_confident"] == 2
    # A floor above 2's score leaves it out, and a floor not below the threshold means no
    # filling: only confident matches.
    assert _build_floor(store, query, next_seq, threshold=0.5,
                        floor=0.4).detail["recalled_seqs"] == [1]
    assert _build_floor(store, query, next_seq, threshold=0.5,
                        floor=0.9).detail["recalled_seqs"] == [1]


def test_recall_is_best_first_until_the_budget_is_spent() -> None:
    store = InMemoryHistoryStore()
    best = make_message(1, "user", "枡元さんの誕生日は3月12日で、好きな花はチューリップ")
    weaker = make_message(2, "user", "枡元さんの誕生日会の場所は未定" + "。" * 200)
    store.append("c", best)
    store.append("c", weaker)
    next_seq = _exchanges(store, 3, first_seq=3)
    query = "枡元さんの誕生日の花は？"
    roomy = _build(store, query, next_seq)
    assert roomy.detail["recalled_seqs"] == [1, 2]
    # Room for the best one only: the weaker, longer one is skipped.
    tight_budget = roomy.total_tokens - weaker.tokens
    tight = _build(store, query, next_seq, max_tokens=tight_budget)
    assert tight.detail["recalled_seqs"] == [1]
    assert tight.total_tokens <= tight_budget


def test_history_of_only_long_messages_stays_within_budget() -> None:
    store = InMemoryHistoryStore()
    long_text = "とても長い話なんだけど、" * 300
    for seq in range(1, 21):
        store.append("c", make_message(seq, "user" if seq % 2 else "assistant", long_text))
    built = _build(store, "それで？", 21, max_tokens=4000)
    assert built.total_tokens <= 4000
    assert built.contents[-1].text == "それで？"
    assert built.detail["dropped_recent"] == 6 - built.detail["kept_recent"]  # type: ignore[operator]


def test_budget_too_small_for_preserved_turns_drops_oldest_exchanges_first() -> None:
    store = InMemoryHistoryStore()
    texts = ["一つ目の質問", "一つ目の答え", "二つ目の質問", "二つ目の答え",
             "三つ目の質問", "三つ目の答え"]
    for seq, text in enumerate(texts, start=1):
        store.append("c", make_message(seq, "user" if seq % 2 else "assistant", text))
    full = _build(store, "四つ目", 7)
    assert full.detail["kept_recent"] == 6
    oldest_exchange = sum(count_tokens(t) + TURN_OVERHEAD_TOKENS for t in texts[:2])
    tight = _build(store, "四つ目", 7, max_tokens=full.total_tokens - 1)
    assert [t.text for t in tight.contents] == [*texts[2:], "四つ目"]
    assert tight.total_tokens == full.total_tokens - oldest_exchange
    # Only room for persona + the new message: every preserved turn goes, the message stays.
    bare = _build(store, "四つ目", 7, max_tokens=persona_tokens(PERSONA) + 20)
    assert bare.contents == [Turn(role="user", text="四つ目")]
    assert bare.detail["dropped_recent"] == 6


def test_message_too_large_for_the_budget_is_refused() -> None:
    persona_count = persona_tokens(PERSONA)
    limit = max_message_tokens(persona_tokens=persona_count, max_tokens=100)
    assert limit == 100 - persona_count - 2 * TURN_OVERHEAD_TOKENS
    assert message_fits(message_tokens=limit, persona_tokens=persona_count, max_tokens=100)
    assert not message_fits(message_tokens=limit + 1, persona_tokens=persona_count,
                            max_tokens=100)
    huge = make_message(1, "user", "あ" * 10, tokens=limit + 1)
    with pytest.raises(MessageTooLargeError) as raised:
        build_context(store=InMemoryHistoryStore(), conversation_id="c", new_message=huge,
                      persona=PERSONA, max_tokens=100)
    assert raised.value.limit == limit


def test_missing_reply_keeps_user_turns_in_order() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "最初"))
    store.append("c", make_message(2, "assistant", "うん"))
    store.append("c", make_message(3, "user", "返事がなかった質問"))  # reply 4 never stored
    built = _build(store, "もう一回聞くね", 5)
    assert [t.role for t in built.contents] == ["user", "model", "user", "user"]


def test_a_recalled_question_comes_back_with_its_answer() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "枡元さんの誕生日って何月何日だっけ"))
    store.append("c", make_message(2, "assistant", "3月12日だよ！お祝いしようね"))
    next_seq = _exchanges(store, 20, first_seq=3)
    built = _build(store, QUERY, next_seq)
    assert built.detail["recalled_seqs"][:2] == [1, 2]  # type: ignore[index]
    assert "3月12日だよ！お祝いしようね" in built.system_instruction
    assert built.total_tokens <= 4000


def test_no_partner_is_added_when_only_the_candidate_fits() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", FACT))
    store.append("c", make_message(2, "assistant", "覚えた！" + "とても長い返事。" * 200))
    next_seq = _exchanges(store, 3, first_seq=3)
    roomy = _build(store, QUERY, next_seq)
    assert "とても長い返事" in roomy.system_instruction  # it is the budget that leaves it out
    tight_limit = roomy.total_tokens - count_tokens("とても長い返事。" * 200) + 10
    built = _build(store, QUERY, next_seq, max_tokens=tight_limit)
    assert FACT in built.system_instruction
    assert "とても長い返事" not in built.system_instruction
    assert built.total_tokens <= tight_limit


def _confident_and_weak(store: InMemoryHistoryStore) -> int:
    """One fact, forty weaker matches on a common word, filler; returns the next seq."""
    store.append("c", make_message(1, "user", FACT))
    store.append("c", make_message(2, "assistant", "覚えたよ！"))
    seq = 3
    for i in range(40):
        store.append("c", make_message(seq, "user", f"佐藤さんの誕生日会、{i}人も来たよ"))
        store.append("c", make_message(seq + 1, "assistant", "にぎやかだね"))
        seq += 2
    return _exchanges(store, 20, first_seq=seq)


def test_unused_budget_is_filled_with_the_next_best_down_to_the_floor() -> None:
    store = InMemoryHistoryStore()
    next_seq = _confident_and_weak(store)  # the birthday parties score about 0.09
    strict = _build_floor(store, QUERY, next_seq, threshold=0.4, floor=0.4)
    filled = _build_floor(store, QUERY, next_seq, threshold=0.4, floor=0.05)
    above = _build_floor(store, QUERY, next_seq, threshold=0.4, floor=0.1)
    assert strict.detail["recalled_confident"] == filled.detail["recalled_confident"] == 1
    assert strict.detail["recalled_seqs"] == above.detail["recalled_seqs"] == [1, 2]
    assert len(filled.detail["recalled_seqs"]) > 40  # type: ignore[arg-type]
    assert strict.total_tokens < filled.total_tokens <= 4000
    assert FACT in filled.system_instruction
    # Every recalled message scores at least the floor, or is the other half of one that does.
    scores = {h.message.seq: h.score for h in store.search(
        "c", query=QUERY, before_seq=next_seq, limit=100, threshold=0.0)}
    recalled = set(filled.detail["recalled_seqs"])  # type: ignore[call-overload]
    for seq in recalled:
        partner = seq + 1 if seq % 2 == 1 else seq - 1
        assert scores.get(seq, 0.0) >= 0.05 or scores.get(partner, 0.0) >= 0.05


def test_filling_never_exceeds_a_tight_budget_and_takes_the_best_first() -> None:
    store = InMemoryHistoryStore()
    next_seq = _confident_and_weak(store)
    roomy = _build_floor(store, QUERY, next_seq, threshold=0.4, floor=0.05)
    for limit in range(roomy.total_tokens - 400, roomy.total_tokens + 1, 37):
        built = build_context(store=store, conversation_id="c", persona=PERSONA,
                              new_message=make_message(next_seq, "user", QUERY),
                              max_tokens=limit, relevance_floor=0.05)
        assert built.total_tokens <= limit
        assert FACT in built.system_instruction  # the confident match is taken first
        assert len(built.detail["recalled_seqs"]) < len(roomy.detail["recalled_seqs"])  # type: ignore[arg-type]


def test_the_newer_of_two_conflicting_facts_comes_back_when_only_one_fits() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "銀行の暗証番号は4821にした"))
    store.append("c", make_message(2, "assistant", "覚えたよ"))
    seq = _exchanges(store, 30, first_seq=3)
    # The newer statement is the longer one: a budget too small for it must not bring
    # back the older alone.
    store.append("c", make_message(seq, "user", "暗証番号、覚えやすいように7356に変えたよ"))
    store.append("c", make_message(seq + 1, "assistant", "了解！"))
    next_seq = _exchanges(store, 5, first_seq=seq + 2)
    query = "銀行の暗証番号なんだっけ？"
    roomy = _build(store, query, next_seq)
    assert "7356" in roomy.system_instruction and "4821" in roomy.system_instruction
    bare = _build_floor(store, query, next_seq, threshold=1.1, floor=1.1)  # nothing recalled
    # As the budget grows, the newer fact comes back first, and the older never alone
    # (the older scores higher: it has 銀行 too).
    seen_newer = False
    for limit in range(bare.total_tokens, roomy.total_tokens + 1):
        system = _build(store, query, next_seq, max_tokens=limit).system_instruction
        assert "4821" not in system or "7356" in system, limit
        seen_newer = seen_newer or "7356" in system
    assert seen_newer


class _FixedSource:
    """A stand-in semantic source (pure unit test): returns what it is given."""

    def __init__(self, found: list[ScoredMessage]) -> None:
        self.found = found
        self.asked: list[str] = []

    def candidates(self, *, conversation_id: str, query: str, before_seq: int,
                   limit: int) -> list[ScoredMessage]:
        self.asked.append(query)
        return [s for s in self.found if s.message.seq < before_seq][:limit]


def test_candidates_from_another_source_are_merged_with_the_lexical_ones() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", FACT))
    paraphrase = make_message(2, "user", "車検は来月の10日に予約した")
    store.append("c", paraphrase)
    next_seq = _exchanges(store, 10, first_seq=3)
    question = "車の点検っていつだったっけ？"
    assert 2 not in _build(store, question, next_seq).detail["recalled_seqs"]  # type: ignore[operator]
    source = _FixedSource([ScoredMessage(paraphrase, 0.8)])
    built = build_context(store=store, conversation_id="c", persona=PERSONA,
                          new_message=make_message(next_seq, "user", question),
                          sources=[source])
    assert source.asked == [question]
    assert 2 in built.detail["recalled_seqs"]  # type: ignore[operator]
    assert "車検は来月の10日に予約した" in built.system_instruction


class _CountingStore(InMemoryHistoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.searches = 0

    def search(self, *args: object, **kwargs: object) -> list[ScoredMessage]:
        self.searches += 1
        return super().search(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exchanges", "asked"), [(0, False), (3, False), (4, True)])
def test_recall_is_asked_only_when_history_is_older_than_the_recent_window(
        exchanges: int, asked: bool) -> None:
    # Three exchanges are kept verbatim (the default window): with no more than that stored
    # there is nothing to recall, so neither the index nor another source is asked.
    store = _CountingStore()
    next_seq = _exchanges(store, exchanges) if exchanges else 1
    source = _FixedSource([])
    build_context(store=store, conversation_id="c", persona=PERSONA, sources=[source],
                  new_message=make_message(next_seq, "user", QUERY))
    assert (store.searches, source.asked) == ((1, [QUERY]) if asked else (0, []))
