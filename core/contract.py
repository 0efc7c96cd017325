"""The input contract, declared once: what an id looks like, and where each limit lives.

The patterns are fixed (they are part of the key layout and of every URL); the limits an
operator may change are settings (`core.settings.Settings`: max_message_chars, …) and are
read from there by the service (which enforces them), the API's OpenAPI document (which
states them) and the page (which is given them when it is served). Nothing restates them.
"""

from __future__ import annotations

import re

CONVERSATION_ID = r"[A-Za-z0-9_-]{1,64}"
JOB_ID = r"[0-9a-f]{32}"
IDEMPOTENCY_KEY = r"[\x21-\x7e]{1,128}"
NOT_BLANK = r"\S"


def anchored(pattern: str) -> str:
    """For pydantic and OpenAPI, which search rather than match."""
    return f"^{pattern}$"


def matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None
