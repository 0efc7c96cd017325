"""Build Gemini's prompt for a new message within a token budget.

Priority when the budget is short (highest first): persona and the new message (always
kept; refused up front when they alone do not fit), the last `preserve_recent` exchanges
verbatim (oldest exchange dropped first), the running summary, then older messages
recalled by relevance, best first, while they fit: first the confident matches (score >=
`relevance_threshold`), then the next best down to `relevance_floor`, so the budget, not
the threshold, decides how much comes back.  Prompt order is different: persona, summary,
recalled (oldest first), recent turns, new message last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from context.fusion import CandidateSource, reciprocal_rank_fusion
from context.store import HistoryStore
from context.tokens import count_fixed_tokens
from context.types import Message, ScoredMessage, Summary, Turn

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4000
DEFAULT_PRESERVE_RECENT = 3
DEFAULT_RELEVANCE_THRESHOLD = 0.4
# Below the threshold, candidates still fill the unused budget down to this score.
DEFAULT_RELEVANCE_FLOOR = 0.15
# Gemini wraps each content (and the system instruction) in role framing our tokenizer
# does not see; a fixed allowance per content keeps the estimate on the safe side.
TURN_OVERHEAD_TOKENS = 4
# The recent window is fetched with slack for exchanges whose reply is split or missing.
_RECENT_FETCH_FACTOR = 4
# Candidates considered for recall: more than a 4,000-token budget holds with their exchanges.
RECALL_LIMIT = 64
# Text glued to a label can tokenise one token longer than the two counted apart (BPE
# merges across the seam); one token per seam keeps the stored-count sum an upper bound.
JOIN_SLACK_TOKENS = 1

SUMMARY_HEADER = "\n\n## これまでの会話の要約\n"
RECALL_HEADER = "\n\n## 関連する過去の会話（抜粋・古い順）\n"
ROLE_LABELS = {"user": "ユーザー: ", "assistant": "あなた: "}
LINE_SEPARATOR = "\n"
GEMINI_ROLES = {"user": "user", "assistant": "model"}


class MessageTooLargeError(ValueError):
    """Persona + new message alone exceed the budget: refuse the message (HTTP 422)."""

    def __init__(self, *, message_tokens: int, limit: int) -> None:
        super().__init__(f"message has {message_tokens} tokens, at most {limit} fit")
        self.message_tokens = message_tokens
        self.limit = limit


def persona_tokens(persona: str) -> int:
    return count_fixed_tokens(persona)


def max_message_tokens(*, persona_tokens: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """Largest new message (in tokens) that build_context accepts with this persona."""
    return max_tokens - persona_tokens - 2 * TURN_OVERHEAD_TOKENS


def message_fits(
    *, message_tokens: int, persona_tokens: int, max_tokens: int = DEFAULT_MAX_TOKENS
) -> bool:
    return message_tokens <= max_message_tokens(persona_tokens=persona_tokens,
                                                max_tokens=max_tokens)


@dataclass(frozen=True)
class HistoryTail:
    """What a build read of the newest history: the messages before the new one (oldest
    first, at most `recent_fetch_limit`), whether they are all there is, and how far the
    stored summary reaches. Enough to tell whether a summary is due once the reply is stored
    (`context.summary.fold_due`) without reading the history again."""

    messages: list[Message]
    complete: bool
    summary_covers: int | None


@dataclass
class BuiltContext:
    system_instruction: str
    contents: list[Turn]
    total_tokens: int
    detail: dict[str, object] = field(default_factory=dict)
    tail: HistoryTail | None = None

    def describe(self) -> str:
        summary = "yes" if self.detail.get("summary_used") else "no"
        return (f"recent {self.detail.get('kept_recent', 0)}, "
                f"recalled {self.detail.get('recalled', 0)}, summary {summary}, "
                f"{self.total_tokens} tokens")


@dataclass
class _Budget:
    limit: int
    used: int = 0

    def take(self, cost: int) -> bool:
        if self.used + cost > self.limit:
            return False
        self.used += cost
        return True


def _turn_cost(message: Message) -> int:
    return message.tokens + TURN_OVERHEAD_TOKENS


def _line_cost(message: Message) -> int:
    return (message.tokens + count_fixed_tokens(ROLE_LABELS[message.role])
            + count_fixed_tokens(LINE_SEPARATOR) + 2 * JOIN_SLACK_TOKENS)


def _exchanges(window: list[Message]) -> list[list[Message]]:
    """Split into exchanges: each starts at a user message (leading replies stand alone)."""
    groups: list[list[Message]] = []
    for message in window:
        if message.role == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return groups


def _newest(
    store: HistoryStore, conversation_id: str, *, before_seq: int, preserve_recent: int
) -> tuple[list[Message], bool]:
    """The newest messages before `before_seq`, and whether they are the whole history."""
    if preserve_recent <= 0:
        return [], False
    limit = recent_fetch_limit(preserve_recent)
    fetched = store.before(conversation_id, before_seq=before_seq, limit=limit)
    return fetched, len(fetched) < limit


def recent_fetch_limit(preserve_recent: int) -> int:
    return max(preserve_recent, 0) * _RECENT_FETCH_FACTOR


def preserved_window(fetched: list[Message], *, preserve_recent: int) -> list[Message]:
    """The last `preserve_recent` exchanges of `fetched` (oldest first), from a user message."""
    if preserve_recent <= 0:
        return []
    user_at = [i for i, m in enumerate(fetched) if m.role == "user"]
    start = user_at[-preserve_recent] if len(user_at) >= preserve_recent else 0
    return fetched[start:]


def _fit_recent(window: list[Message], budget: _Budget) -> list[Message]:
    """Keep the newest exchanges that fit; the oldest preserved exchange goes first."""
    kept: list[list[Message]] = []
    for group in reversed(_exchanges(window)):
        if not budget.take(sum(_turn_cost(m) for m in group)):
            break
        kept.append(group)
    return [m for group in reversed(kept) for m in group]


def _fit_summary(summary: Summary | None, new_seq: int, budget: _Budget) -> Summary | None:
    # A summary written after this message (a rebuild of an old prompt) would leak the future.
    if summary is None or not summary.text or summary.covers_up_to_seq >= new_seq:
        return None
    cost = count_fixed_tokens(SUMMARY_HEADER) + summary.tokens + 2 * JOIN_SLACK_TOKENS
    return summary if budget.take(cost) else None


PartnerOf = Callable[[Message], Message | None]


def _fit_recalled(candidates: list[ScoredMessage], budget: _Budget,
                  partner_of: PartnerOf) -> list[Message]:
    """Best first, each with the other half of its exchange when that fits too (a question
    recalled without its answer, or an answer without its question, says little); one that
    does not fit is skipped, a shorter one after it may still fit, unless it is superseded
    by a newer message that did not fit."""
    kept: dict[int, Message] = {}
    header = count_fixed_tokens(RECALL_HEADER) + JOIN_SLACK_TOKENS
    for candidate in candidates:
        if candidate.superseded_by is not None and candidate.superseded_by not in kept:
            continue  # what replaced it did not fit: the old version alone would mislead
        for message in (candidate.message, partner_of(candidate.message)):
            if message is None or message.seq in kept:
                continue
            if budget.take(_line_cost(message) + (0 if kept else header)):
                kept[message.seq] = message
            elif message is candidate.message:
                break  # no room for the candidate: none for its partner either
    return sorted(kept.values(), key=lambda m: m.seq)


def _partner_seq(message: Message) -> int:
    return message.seq + 1 if message.role == "user" else message.seq - 1


def _partner_finder(store: HistoryStore, conversation_id: str, candidates: list[ScoredMessage],
                    *, before_seq: int) -> PartnerOf:
    """The other half of each candidate's exchange (reply seq = question seq + 1), if stored
    and older than the recent window; all fetched in one read."""
    wanted = {_partner_seq(c.message) for c in candidates}
    wanted = {seq for seq in wanted if 1 <= seq < before_seq}
    found = {m.seq: m for m in store.get_many(conversation_id, sorted(wanted))} if wanted else {}

    def partner_of(message: Message) -> Message | None:
        partner = found.get(_partner_seq(message))
        return partner if partner is not None and partner.role != message.role else None

    return partner_of


def _recall_candidates(
    store: HistoryStore, conversation_id: str, *, query: str, before_seq: int, floor: float,
    sources: Sequence[CandidateSource],
) -> list[ScoredMessage]:
    """Lexical candidates, merged with any other source's by reciprocal rank fusion."""
    lexical = store.search(conversation_id, query=query, before_seq=before_seq,
                           limit=RECALL_LIMIT, threshold=floor)
    if not sources:
        return lexical
    others = [s.candidates(conversation_id=conversation_id, query=query, before_seq=before_seq,
                           limit=RECALL_LIMIT) for s in sources]
    return newer_first(reciprocal_rank_fusion([lexical, *others], limit=RECALL_LIMIT))


def newer_first(candidates: list[ScoredMessage]) -> list[ScoredMessage]:
    """Each superseded candidate moved to just after the newer one that supersedes it, when
    fusion ranked it above that one: the lexical ranking's newer-wins order again.
    Otherwise the budget filling would skip the older (its newer one not taken yet) and
    never come back to it."""
    present = {c.message.seq for c in candidates}
    waiting: dict[int, list[ScoredMessage]] = {}
    placed: set[int] = set()
    out: list[ScoredMessage] = []
    for candidate in candidates:
        newer = candidate.superseded_by
        if newer is not None and newer in present and newer not in placed:
            waiting.setdefault(newer, []).append(candidate)
            continue
        ready = [candidate]
        while ready:  # placing one may release what waited for it (chains of updates)
            current = ready.pop(0)
            out.append(current)
            placed.add(current.message.seq)
            ready.extend(waiting.pop(current.message.seq, []))
    return out


def _system_instruction(persona: str, summary: Summary | None, recalled: list[Message]) -> str:
    parts = [persona]
    if summary is not None:
        parts.append(SUMMARY_HEADER + summary.text)
    if recalled:
        lines = [ROLE_LABELS[m.role] + m.text for m in recalled]
        parts.append(RECALL_HEADER + LINE_SEPARATOR.join(lines))
    return "".join(parts)


def _fixed_cost(persona: str, new_message: Message, max_tokens: int) -> int:
    persona_count = persona_tokens(persona)
    if not message_fits(message_tokens=new_message.tokens, persona_tokens=persona_count,
                        max_tokens=max_tokens):
        raise MessageTooLargeError(
            message_tokens=new_message.tokens,
            limit=max_message_tokens(persona_tokens=persona_count, max_tokens=max_tokens))
    return persona_count + TURN_OVERHEAD_TOKENS + _turn_cost(new_message)


def build_context(
    *, store: HistoryStore, conversation_id: str, new_message: Message, persona: str,
    max_tokens: int = DEFAULT_MAX_TOKENS, preserve_recent: int = DEFAULT_PRESERVE_RECENT,
    relevance_threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
    relevance_floor: float = DEFAULT_RELEVANCE_FLOOR,
    sources: Sequence[CandidateSource] = (),
) -> BuiltContext:
    """The prompt for `new_message` from history with seq < new_message.seq.

    Older messages scoring >= relevance_threshold are confident matches; the budget they
    leave is filled with the next best down to relevance_floor (no filling when the floor
    is not below the threshold).  `sources` add candidates (e.g. semantic) to the lexical
    ones.  Raises MessageTooLargeError when persona + new message alone exceed max_tokens.
    """
    budget = _Budget(limit=max_tokens, used=_fixed_cost(persona, new_message, max_tokens))
    fetched, complete = _newest(store, conversation_id, before_seq=new_message.seq,
                                preserve_recent=preserve_recent)
    window = preserved_window(fetched, preserve_recent=preserve_recent)
    recent = _fit_recent(window, budget)
    stored_summary = store.get_summary(conversation_id)
    summary = _fit_summary(stored_summary, new_message.seq, budget)
    # Older = before the whole preserved window, even the part dropped for budget, so a
    # recalled message never appears out of order among the recent turns.
    older_than = window[0].seq if window else new_message.seq
    if complete and len(window) == len(fetched):
        # The whole history is in the recent window: nothing older to recall, so no query
        # to analyse, no index to read, no query to embed (a new conversation's prompts).
        candidates: list[ScoredMessage] = []
    else:
        candidates = _recall_candidates(store, conversation_id, query=new_message.text,
                                        before_seq=older_than, sources=sources,
                                        floor=min(relevance_floor, relevance_threshold))
    recalled = _fit_recalled(candidates, budget, _partner_finder(
        store, conversation_id, candidates, before_seq=older_than))
    confident = {c.message.seq for c in candidates if c.score >= relevance_threshold}
    contents = [Turn(role=GEMINI_ROLES[m.role], text=m.text) for m in recent]
    contents.append(Turn(role="user", text=new_message.text))
    detail: dict[str, object] = {
        "kept_recent": len(recent), "dropped_recent": len(window) - len(recent),
        "recalled": len(recalled), "recalled_seqs": [m.seq for m in recalled],
        "recalled_confident": sum(1 for m in recalled if m.seq in confident),
        "summary_used": summary is not None, "prompt_tokens": budget.used,
        "max_tokens": max_tokens,
    }
    built = BuiltContext(system_instruction=_system_instruction(persona, summary, recalled),
                         contents=contents, total_tokens=budget.used, detail=detail,
                         tail=HistoryTail(messages=fetched, complete=complete,
                                          summary_covers=(stored_summary.covers_up_to_seq
                                                          if stored_summary else None)))
    logger.debug("conversation %s seq %s: %s", conversation_id, new_message.seq,
                 built.describe())
    return built
