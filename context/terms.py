"""Index terms: the words of a message the way people write them, for lexical recall.

* Text is NFKC-normalised (full-width Latin and digits, half-width katakana) and
  case-folded.
* Latin words go through the Snowball English stemmer (PyStemmer), minus stop words:
  "parked", "parks", "parking" all become ``park``; "where did I" says nothing.
* Japanese goes through Sudachi (SudachiPy + sudachidict-core) and each content word
  becomes its normalized form (食べた → 食べる, 五 → 5, ｶﾀｶﾅ → 片仮名); compounds also give
  their short units at half weight (誕生日 → 誕生日, 誕生, 日), and "何" compounds give their
  counter (何歳 → 歳, so 「何歳？」 meets 「五歳」).  Particles, auxiliaries, pronouns and
  honorifics (さん, ちゃん) are dropped.
* Character bigrams are kept as a fallback where a dictionary is unreliable: unknown words
  and katakana runs, and hiragana names (ひまり comes out as ひま+り in one sentence and
  ひ+まり in another; its bigrams ひま, まり are the same in both).  A fallback's bigrams
  share half the weight of one word between them.

`analyse(text)` gives each term's weight (used for a query) and count (used for a stored
message's length); `terms(text)` is the distinct terms, what the index stores.  The
Sudachi dictionary is loaded once per process, on first use; `warm_up()` loads it ahead
(e.g. in a parent process before it forks its workers, so they share the pages).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from Stemmer import Stemmer
from sudachipy import Dictionary, SplitMode

from context.stopwords import ENGLISH_STOP_WORDS, JAPANESE_STOP_FORMS, JAPANESE_STOP_POS

logger = logging.getLogger(__name__)

_HIRAGANA = "\u3041-\u309f"
_KATAKANA = "\u30a0-\u30ff\u31f0-\u31ff"
_KANJI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005-\u3007"
_CJK = _HIRAGANA + _KATAKANA + _KANJI
# One pass: a run of Japanese (any of the three scripts) with the digits inside or around
# it (Sudachi reads 「7歳」 and 「五歳」 alike only when it sees the digit), or a run of other
# letters/digits (Latin words, numbers on their own).
_PIECES = re.compile(rf"((?:[0-9]*[{_CJK}])+[0-9]*)|([^\W_{_CJK}]+)")
_HIRAGANA_RUN = re.compile(rf"[{_HIRAGANA}]+")
_KATAKANA_RUN = re.compile(rf"[{_KATAKANA}]+")
# What follows a hiragana name: one honorific, then one particle (ひまりって, ゆうとくんは).
_NAME_TAIL = re.compile(
    r"(?:ちゃん|くん|さん|たち)?"
    r"(?:って|ったら|は|が|を|に|の|と|も|で|へ|や|から|まで|より|だっけ|だよ|です|ね|よ)?$")
_HONORIFIC = re.compile(r"(?:ちゃん|くん|さん)")

WORD_WEIGHT = 1.0
SHORT_UNIT_WEIGHT = 0.5  # the parts of a compound (誕生 and 日 of 誕生日)
FALLBACK_WEIGHT = 0.5  # shared by the bigrams of one fallback span
MAX_TERM_CHARS = 40
MIN_FALLBACK_CHARS = 3  # a two-character span is its own bigram: nothing to add
MIN_COMPOUND_CHARS = 3
# Sudachi refuses inputs over 49,149 bytes; 4,000 characters is at most 12,000 bytes.
SUDACHI_CHUNK_CHARS = 4000

SUDACHI_DICT = "core"


@dataclass(slots=True)
class Analysis:
    """Terms of one text: weight (the largest of its occurrences) and count of each."""

    weights: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # Word occurrences (fallback bigrams not counted): the length BM25 normalises by.
    length: int = 0

    def add(self, term: str, weight: float) -> None:
        term = term[:MAX_TERM_CHARS]
        if not term:
            return
        if weight > self.weights.get(term, 0.0):
            self.weights[term] = weight
        self.counts[term] = self.counts.get(term, 0) + 1
        if weight >= WORD_WEIGHT:
            self.length += 1

    def encode(self) -> str:
        """Length and term counts, as the index stores them beside a message (terms never
        hold a tab: they are runs of letters, digits or Japanese)."""
        parts = [str(self.length)]
        for term, count in self.counts.items():
            parts.extend([term] * count)
        return "\t".join(parts)

    @classmethod
    def decode(cls, raw: str) -> Analysis:
        """What `encode` stored: counts and length (no weights: a stored message needs none)."""
        length, *stored = raw.split("\t")
        counts: dict[str, int] = {}
        for term in stored:
            counts[term] = counts.get(term, 0) + 1
        return cls(weights={}, counts=counts, length=int(length))


class _Analyser:
    """Sudachi and the stemmer behind one lock: neither object is thread-safe, and the API
    stores (so analyses) messages from several threads.  A call takes tens of µs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._split_a = SplitMode.A
        self._tokenizer = Dictionary(dict=SUDACHI_DICT).tokenizer(mode=SplitMode.C)
        self._stemmer = Stemmer("english")

    def stem(self, word: str) -> str:
        with self._lock:
            return str(self._stemmer.stemWord(word))

    def morphemes(self, text: str) -> list[tuple[int, int, str, str, tuple[str, ...], bool, list[str]]]:
        """(begin, end, surface, normalized, pos, oov, short units) of each morpheme."""
        with self._lock:
            out = []
            for m in self._tokenizer.tokenize(text):
                surface, pos = m.surface(), tuple(m.part_of_speech()[:2])
                short: list[str] = []
                # Only nouns of 3+ characters are compounds worth splitting (誕生日, 暗証番号);
                # splitting every morpheme would double the cost of an analysis.
                if pos[0] == "名詞" and len(surface) >= MIN_COMPOUND_CHARS:
                    units = m.split(self._split_a)
                    short = [u.normalized_form() for u in units] if len(units) > 1 else []
                out.append((m.begin(), m.end(), surface, m.normalized_form(), pos, m.is_oov(),
                            short))
            return out


@functools.cache
def _analyser() -> _Analyser:
    logger.debug("loading the Sudachi dictionary (%s) and the English stemmer", SUDACHI_DICT)
    return _Analyser()


def warm_up() -> None:
    """Load the dictionary and the stemmer now rather than on the first message."""
    _analyser()


def normalize(text: str) -> str:
    # NFKC folds full-width Latin/digits and half-width katakana; casefold folds case.
    return unicodedata.normalize("NFKC", text).casefold()


def _latin(word: str, out: Analysis) -> None:
    if word.isdigit():
        out.add(word, WORD_WEIGHT)
    elif len(word) > 1 and word not in ENGLISH_STOP_WORDS:
        out.add(_analyser().stem(word), WORD_WEIGHT)


def _bigrams(span: str, out: Analysis) -> None:
    grams = [span[i:i + 2] for i in range(len(span) - 1)]
    for gram in grams:
        out.add(gram, FALLBACK_WEIGHT / len(grams))


def _content_form(normalized: str, pos: tuple[str, ...], surface: str) -> str | None:
    """The term a morpheme stands for, or None for words that say how, not what."""
    if normalized.startswith("何") and len(normalized) > 1:
        return normalize(normalized[1:])  # 何歳 asks for an age: 歳; 何時: 時
    if pos[0] in JAPANESE_STOP_POS or normalized in JAPANESE_STOP_FORMS:
        return None
    if len(surface) == 1 and _HIRAGANA_RUN.fullmatch(surface):
        return None  # a lone kana (ひ of ひまり) is noise, whatever Sudachi makes of it
    return normalize(normalized)


def _words(morphemes: list[Any], out: Analysis) -> None:
    for _begin, _end, surface, normalized, pos, oov, short in morphemes:
        form = _content_form(normalized, pos, surface)
        if form is None:
            continue
        out.add(form, WORD_WEIGHT)
        for unit in short:
            unit_form = _content_form(unit, ("名詞",), unit)
            if unit_form is not None and unit_form != form:
                out.add(unit_form, SHORT_UNIT_WEIGHT)
        if oov and not surface.isdigit() and len(surface) >= MIN_FALLBACK_CHARS:
            _bigrams(surface, out)


def _has_noun(morphemes: list[Any], begin: int, end: int) -> bool:
    return any(m[4][0] == "名詞" and m[0] < end and m[1] > begin for m in morphemes)


def _leading_particles(morphemes: list[Any], begin: int, end: int) -> int:
    """Where a hiragana span starts once particles in front of it (の of のひまり) are cut."""
    for m_begin, m_end, _s, _n, pos, _o, _u in morphemes:
        if m_begin == begin and m_end < end and pos[0] == "助詞":
            begin = m_end
    return begin


def _fallbacks(run: str, morphemes: list[Any], out: Analysis) -> None:
    for match in _KATAKANA_RUN.finditer(run):
        if len(match.group()) >= MIN_FALLBACK_CHARS:
            _bigrams(match.group(), out)
    for match in _HIRAGANA_RUN.finditer(run):
        begin, end = match.start(), match.end()
        named = _HONORIFIC.search(match.group()) is not None
        if not (named or _has_noun(morphemes, begin, end)):
            continue
        begin = _leading_particles(morphemes, begin, end)
        name = _NAME_TAIL.sub("", run[begin:end])
        if len(name) >= 2:  # めい, みお: the name itself, at fallback weight
            _bigrams(name, out)


def _japanese(run: str, out: Analysis) -> None:
    for start in range(0, len(run), SUDACHI_CHUNK_CHARS):
        chunk = run[start:start + SUDACHI_CHUNK_CHARS]
        morphemes = _analyser().morphemes(chunk)
        _words(morphemes, out)
        _fallbacks(chunk, morphemes, out)


def _pieces(text: str) -> Iterator[tuple[str, bool]]:
    for match in _PIECES.finditer(normalize(text)):
        japanese, other = match.groups()
        yield (japanese, True) if japanese else (other, False)


def analyse(text: str) -> Analysis:
    """Every term of `text` with its weight and count."""
    out = Analysis()
    for piece, japanese in _pieces(text):
        if japanese:
            _japanese(piece, out)
        else:
            _latin(piece, out)
    return out


def terms(text: str) -> list[str]:
    """Distinct index terms of `text`, in order of first appearance."""
    return list(analyse(text).weights)
