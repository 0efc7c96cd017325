"""Secrets that must never leave the process in text: logs, incidents, responses.

`configure_logging` registers the Gemini key; anything that stores free text taken from
exceptions (the incident table) passes it through `scrub`.
"""

from __future__ import annotations

_secrets: set[str] = set()
MASK = "***"


def register(secret: str | None) -> None:
    if secret:
        _secrets.add(secret)


def scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


def registered() -> list[str]:
    return sorted(_secrets)
