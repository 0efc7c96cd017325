"""How many event streams and long-polls one person holds open, across every API process.

Each open stream or long-poll holds a slot: a member of the person's sorted set
(keys.person_followers) scored with the end of its lease (Redis's own clock, so API hosts
need not agree on the time). A slot is taken only while fewer than the cap are unexpired;
a stream renews its lease while it runs and gives the slot back when it ends. An API killed
while holding slots cannot give them back: they lapse with their lease (keys.follower_lease_s).
"""

from __future__ import annotations

import logging
import uuid

import redis

from core import keys

logger = logging.getLogger(__name__)

# KEYS[1] the person's set; ARGV: cap, lease (s), slot id. 1 when taken, 0 when full.
TAKE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""
# KEYS[1] the person's set; ARGV: lease (s), slot id. Only a slot still held is renewed.
RENEW = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]) + 1)
return 1
"""


class FollowerSlots:
    def __init__(self, *, client: redis.Redis, cap: int,
                 lease_s: int = keys.follower_lease_s) -> None:
        self.cap = cap
        self.lease_s = lease_s
        self._take = client.register_script(TAKE)
        self._renew = client.register_script(RENEW)
        self._client = client

    def take(self, person: str) -> str | None:
        """A slot for one more stream or long-poll of `person`, or None at the cap."""
        slot = uuid.uuid4().hex
        taken = self._take(keys=[keys.person_followers(person)],
                           args=[self.cap, self.lease_s, slot])
        return slot if taken else None

    def renew(self, person: str, slot: str) -> None:
        self._renew(keys=[keys.person_followers(person)], args=[self.lease_s, slot])

    def give_back(self, person: str, slot: str) -> None:
        self._client.zrem(keys.person_followers(person), slot)

    def held(self, person: str) -> int:
        return int(self._client.zcard(keys.person_followers(person)))
