"""Index terms for relevance: character bigrams for Japanese, words for Latin text.

Japanese has no spaces, so words cannot be split on whitespace.  Rather than a
morphological analyser (big dictionary, and unknown names such as 枡元 are split
poorly), a CJK run is cut where the script changes (kanji / hiragana / katakana) and
each piece gives its character bigrams, or itself when it is one character long.
Cutting at script changes keeps 「猫」 in 「猫が」 and 「猫は」 the same term.
"""

from __future__ import annotations

import logging
import re
import unicodedata

logger = logging.getLogger(__name__)

_HIRAGANA = "\u3041-\u309f"
_KATAKANA = "\u30a0-\u30ff\u31f0-\u31ff"
_KANJI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005-\u3007"
_CJK = _HIRAGANA + _KATAKANA + _KANJI
# One regex pass: a run of one script, or a run of other letters/digits (Latin etc.).
_PIECES = re.compile(
    rf"[{_HIRAGANA}]+|[{_KATAKANA}]+|[{_KANJI}]+|[^\W_{_CJK}]+"
)
_HIRAGANA_RUN = re.compile(rf"[{_HIRAGANA}]+")

# Hiragana pieces are mostly particles, endings and auxiliaries: they say how something
# is asked, not what about, so they count for less in a relevance score.
HIRAGANA_WEIGHT = 0.3
MAX_TERM_CHARS = 40


def normalize(text: str) -> str:
    # NFKC folds full-width Latin/digits and half-width katakana; casefold folds case.
    return unicodedata.normalize("NFKC", text).casefold()


def _is_cjk(piece: str) -> bool:
    return "\u3000" <= piece[0] <= "\u9fff" or "\uf900" <= piece[0] <= "\ufaff"


def _piece_terms(piece: str) -> list[str]:
    if not _is_cjk(piece):
        return [piece[:MAX_TERM_CHARS]]
    if len(piece) == 1:
        # A lone hiragana is a particle (は, の, を): no meaning of its own.
        return [] if _HIRAGANA_RUN.fullmatch(piece) else [piece]
    return [piece[i:i + 2] for i in range(len(piece) - 1)]


def terms(text: str) -> list[str]:
    """Distinct index terms of `text`, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _PIECES.finditer(normalize(text)):
        for term in _piece_terms(match.group()):
            seen.setdefault(term, None)
    return list(seen)


def term_weight(term: str) -> float:
    """Multiplier applied to a term's IDF (hiragana-only terms count less)."""
    return HIRAGANA_WEIGHT if _HIRAGANA_RUN.fullmatch(term) else 1.0
