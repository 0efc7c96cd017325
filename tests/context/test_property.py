"""For any history and budget the prompt fits the budget and ends with the new message."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context.builder import TURN_OVERHEAD_TOKENS, MessageTooLargeError, build_context
from context.memory_store import InMemoryHistoryStore
from context.tokens import count_tokens
from context.types import Summary
from tests.context.chatgen import make_message

_ALPHABET = st.sampled_from(list("枡元さんの誕生日は月だよ京都ラーメン猫がabc 12。？\n"))
_TEXT = st.text(_ALPHABET, min_size=1, max_size=120)
PERSONA = "あなたは妹です。"


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, str]]:
    texts = draw(st.lists(_TEXT, max_size=30))
    roles = draw(st.lists(st.sampled_from(["user", "assistant"]), min_size=len(texts),
                          max_size=len(texts)))
    return list(zip(roles, texts, strict=True))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), new_text=_TEXT, max_tokens=st.integers(20, 600),
       preserve=st.integers(0, 4), threshold=st.floats(0.0, 1.0),
       summary=st.none() | _TEXT)
def test_prompt_never_exceeds_budget_and_ends_with_new_message(
    history: list[tuple[str, str]], new_text: str, max_tokens: int, preserve: int,
    threshold: float, summary: str | None,
) -> None:
    store = InMemoryHistoryStore()
    for seq, (role, text) in enumerate(history, start=1):
        store.append("c", make_message(seq, role, text))
    if summary is not None and history:
        store.set_summary("c", Summary(text=summary, covers_up_to_seq=1,
                                       tokens=count_tokens(summary)))
    new = make_message(len(history) + 1, "user", new_text)
    try:
        built = build_context(store=store, conversation_id="c", new_message=new,
                              persona=PERSONA, max_tokens=max_tokens,
                              preserve_recent=preserve, relevance_threshold=threshold)
    except MessageTooLargeError:
        assert count_tokens(PERSONA) + new.tokens + 2 * TURN_OVERHEAD_TOKENS > max_tokens
        return
    assert built.total_tokens <= max_tokens
    assert built.contents[-1].role == "user" and built.contents[-1].text == new_text
    # Re-tokenising the rendered prompt agrees with the stored-count accounting.
    recount = count_tokens(built.system_instruction) + sum(
        count_tokens(t.text) for t in built.contents)
    recount += TURN_OVERHEAD_TOKENS * (1 + len(built.contents))
    assert recount <= built.total_tokens
