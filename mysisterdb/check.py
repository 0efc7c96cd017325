"""`mysisterdb check`: verify stored data (being written by a teammate)."""

from __future__ import annotations

from typing import TextIO

import redis


def run_check(*, redis: redis.Redis, repair: bool, hard_limit_s: float, out: TextIO) -> int:
    raise NotImplementedError
