"""Follower slots on a real Redis: the cap, giving back, and a lease that lapses when the
API holding it died without giving it back (kill -9)."""

from __future__ import annotations

import redis

from core import keys
from core.followers import FollowerSlots
from tests.procs import wait_for


def test_slots_are_capped_given_back_and_lapse(redis_client: redis.Redis) -> None:
    slots = FollowerSlots(client=redis_client, cap=2, lease_s=1)
    one, two = slots.take("alice"), slots.take("alice")
    assert one and two and slots.take("alice") is None
    assert slots.take("bob") is not None  # each person has their own
    slots.give_back("alice", one)
    live = slots.take("alice")
    assert live is not None and slots.take("alice") is None
    # Nobody gives `two` back (its API died) while `live` is renewed by its stream: after
    # its lease, `two`'s slot is free again.
    wait_for(lambda: (slots.renew("alice", live), slots.take("alice"))[1] is not None,
             timeout_s=5, what="the dead slot's lease to lapse")
    assert redis_client.ttl(keys.person_followers("alice")) <= 2


def test_a_renewed_slot_outlives_its_first_lease(redis_client: redis.Redis) -> None:
    slots = FollowerSlots(client=redis_client, cap=1, lease_s=2)
    held = slots.take("carol")
    assert held is not None
    first_end = redis_client.zscore(keys.person_followers("carol"), held)
    wait_for(lambda: (slots.renew("carol", held),
                      redis_client.zscore(keys.person_followers("carol"), held))[1] != first_end,
             timeout_s=5, what="a renewal past the first lease end")
    assert slots.take("carol") is None  # still held
