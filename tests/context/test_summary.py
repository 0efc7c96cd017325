from __future__ import annotations

from context.builder import HistoryTail, build_context
from context.memory_store import InMemoryHistoryStore
from context.summary import (
    FACTS_HEADER,
    FLOW_HEADER,
    finalize_summary,
    fold_due,
    pending_messages,
    plan_summary,
    summary_prompt,
)
from context.tokens import count_tokens
from context.types import Summary
from tests.context.chatgen import ChatGenerator, make_message


def _store(messages: int) -> InMemoryHistoryStore:
    store = InMemoryHistoryStore()
    for message in ChatGenerator().messages(messages):
        store.append("c", message)
    return store


def test_nothing_to_summarise_while_history_fits_the_recent_window() -> None:
    assert plan_summary(store=InMemoryHistoryStore(), conversation_id="c") is None
    assert plan_summary(store=_store(6), conversation_id="c") is None


def test_batch_is_the_oldest_messages_outside_the_recent_window() -> None:
    store = _store(10)  # seqs 1..10, recent window = 5..10
    batch = plan_summary(store=store, conversation_id="c")
    assert batch is not None
    assert [m.seq for m in batch.messages] == [1, 2, 3, 4]
    assert batch.previous is None and "（まだありません）" in batch.prompt
    assert all(m.text in batch.prompt for m in batch.messages)


def test_batch_is_bounded_by_count_and_tokens() -> None:
    store = _store(200)
    batch = plan_summary(store=store, conversation_id="c", max_messages=40)
    assert batch is not None and len(batch.messages) == 40
    small = pending_messages(store=store, conversation_id="c", after_seq=0, max_tokens=100)
    assert sum(m.tokens for m in small) <= 100 and small[0].seq == 1


def test_folding_continues_after_the_stored_summary() -> None:
    store = _store(100)
    first = plan_summary(store=store, conversation_id="c", max_messages=10)
    assert first is not None
    assert store.set_summary("c", first.finish("要約その1"))
    second = plan_summary(store=store, conversation_id="c", max_messages=10)
    assert second is not None and second.messages[0].seq == 11
    assert second.previous is not None and "要約その1" in second.prompt


def test_a_single_huge_message_is_cut_to_fit_the_batch() -> None:
    store = InMemoryHistoryStore()
    store.append("c", make_message(1, "user", "長い話。" * 2000))
    for message in ChatGenerator().messages(6, first_seq=2):
        store.append("c", message)
    batch = plan_summary(store=store, conversation_id="c", max_batch_tokens=300)
    assert batch is not None and len(batch.messages) == 1
    assert batch.messages[0].tokens <= 300


def test_finalize_caps_the_model_output() -> None:
    summary = finalize_summary(text="  長すぎる要約。" * 500, covers_up_to_seq=9, max_tokens=50)
    assert summary.tokens == count_tokens(summary.text) <= 50
    assert summary.covers_up_to_seq == 9


def test_prompt_names_the_cap_and_labels_roles() -> None:
    previous = Summary(text="前の要約", covers_up_to_seq=2, tokens=4)
    prompt = summary_prompt(previous=previous, max_summary_tokens=300,
                            messages=[make_message(3, "user", "やあ"),
                                      make_message(4, "assistant", "おかえり")])
    assert "300トークン以内" in prompt and "前の要約" in prompt
    assert "ユーザー: やあ\nあなた: おかえり" in prompt


def test_summary_never_goes_backwards() -> None:
    store = InMemoryHistoryStore()
    assert not store.set_summary("c", Summary(text="空", covers_up_to_seq=20, tokens=1))
    store.append("c", make_message(1, "user", "やあ"))
    assert store.set_summary("c", Summary(text="新", covers_up_to_seq=20, tokens=1))
    assert not store.set_summary("c", Summary(text="古", covers_up_to_seq=10, tokens=1))
    assert store.get_summary("c") == Summary(text="新", covers_up_to_seq=20, tokens=1)


def test_prompt_asks_for_a_fact_list_that_is_carried_over_and_updated() -> None:
    previous = Summary(text=f"{FACTS_HEADER}\n- ひまり: 五歳\n{FLOW_HEADER}\n京都の話", covers_up_to_seq=4,
                       tokens=20)
    prompt = summary_prompt(previous=previous,
                            messages=[make_message(5, "user", "会議、木曜の15時に変わったんだ")])
    assert FACTS_HEADER in prompt and FLOW_HEADER in prompt
    assert prompt.index(FACTS_HEADER) < prompt.index(FLOW_HEADER)
    for kind in ("人名", "日付", "場所", "数字", "好き嫌い"):
        assert kind in prompt
    assert "一つも落とさずに引き継ぐ" in prompt  # survives re-summarising
    assert "古い行を新しい内容に" in prompt  # an update replaces, never duplicates
    assert "事実は削らない" in prompt and "600トークン以内" in prompt
    assert "- ひまり: 五歳" in prompt


def test_a_summary_over_its_cap_loses_the_narrative_first_and_never_half_a_fact() -> None:
    facts = [f"- 人{i}: {i}月{i}日生まれ、好物はラーメン" for i in range(1, 9)]
    text = "\n".join([FACTS_HEADER, *facts, FLOW_HEADER, "京都旅行の計画を話した。" * 40])
    cap = count_tokens("\n".join([FACTS_HEADER, *facts, FLOW_HEADER])) + 30
    summary = finalize_summary(text=text, covers_up_to_seq=9, max_tokens=cap)
    assert summary.tokens == count_tokens(summary.text) <= cap
    assert all(fact in summary.text.splitlines() for fact in facts)
    assert text.startswith(summary.text) and summary.text != text
    # Too small for every fact: whole lines are kept, the last one is not cut in half.
    small = finalize_summary(text=text, covers_up_to_seq=9, max_tokens=40)
    assert small.tokens <= 40
    assert all(line in [FACTS_HEADER, *facts] for line in small.text.splitlines())


def _turns(store: InMemoryHistoryStore, turns: int, *, failed: frozenset[int] = frozenset()) -> None:
    """Turns 1..turns as the service stores them (user 2t-1, reply 2t); a failed turn has no
    reply."""
    for turn in range(1, turns + 1):
        store.append("c", make_message(2 * turn - 1, "user", f"質問{turn}"))
        if turn not in failed:
            store.append("c", make_message(2 * turn, "assistant", f"返事{turn}"))


def _due_after_reply(store: InMemoryHistoryStore, turn: int) -> tuple[bool, bool]:
    """(fold_due from what the build of `turn` read, plan_summary once its reply is stored)."""
    new = make_message(2 * turn - 1, "user", f"質問{turn}")
    store.append("c", new)
    built = build_context(store=store, conversation_id="c", new_message=new, persona="妹")
    reply = make_message(2 * turn, "assistant", f"返事{turn}")
    store.append("c", reply)
    due = fold_due(built.tail, stored=[new, reply])
    return due, plan_summary(store=store, conversation_id="c") is not None


def test_fold_due_from_the_build_agrees_with_planning_on_the_stored_history() -> None:
    # Every length around the recent window and the build's read (12 messages), with and
    # without a summary reaching various points: the build's answer is the planner's.
    for before in range(0, 16):
        for covers in (None, 0, 2, 2 * before - 8, 2 * before - 6, 2 * before):
            store = InMemoryHistoryStore()
            _turns(store, before)
            if covers is not None and covers > 0:
                store.set_summary("c", Summary(text="要約", covers_up_to_seq=covers, tokens=2))
            due, planned = _due_after_reply(store, before + 1)
            assert due == planned, (before, covers)


def test_fold_due_never_misses_a_fold_when_turns_failed() -> None:
    # Failed turns leave holes the build cannot see past: it may say yes for nothing, never no
    # for something.
    for before in range(0, 16):
        for failed in (frozenset({1}), frozenset({2, 3}), frozenset(range(1, before + 1, 2))):
            store = InMemoryHistoryStore()
            _turns(store, before, failed=failed)
            due, planned = _due_after_reply(store, before + 1)
            assert due or not planned, (before, failed)
    # Three short exchanges leave nothing to fold: no task for them.
    store = InMemoryHistoryStore()
    _turns(store, 2)
    assert _due_after_reply(store, 3) == (False, False)
    assert _due_after_reply(store, 4) == (True, True)


def test_fold_due_says_yes_when_older_messages_were_not_read() -> None:
    # A window reaching the first message read (a run of replies, e.g. imported): whatever
    # lies before the read is unknown, so a fold may be due; a whole history read says no.
    replies = [make_message(seq, "assistant", f"返事{seq}") for seq in range(3, 15)]
    unread = HistoryTail(messages=replies, complete=False, summary_covers=None)
    assert fold_due(unread, stored=[])
    assert not fold_due(HistoryTail(messages=replies, complete=True, summary_covers=None),
                        stored=[])
    assert not fold_due(HistoryTail(messages=replies, complete=False, summary_covers=2),
                        stored=[])
