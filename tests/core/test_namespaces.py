"""Each person's conversation ids are their own, and data from before namespaces stays where
it is for its owner (core/namespaces.py), against a real redis-server."""

from __future__ import annotations

import redis

from core.access import OWNER
from core.namespaces import external_id, internal_id
from tests.core.test_lifecycle import make


def test_a_conversation_stored_before_namespaces_keeps_its_id_for_its_owner(
        redis_client: redis.Redis) -> None:
    lc = make(redis_client)
    # As the previous version stored it: the plain id, owned by alice.
    lc.submit(conversation_id="default", text="むかしの話", tokens=3, owner="alice")
    assert internal_id(lc, person="alice", conversation_id="default") == "default"
    assert internal_id(lc, person="bob", conversation_id="default") == "default~bob"
    assert internal_id(lc, person=OWNER, conversation_id="default") == "default~owner"
    assert lc.owner_of("default~bob") is None  # bob's is his own, and empty


def test_new_conversations_are_each_persons_own(redis_client: redis.Redis) -> None:
    lc = make(redis_client)
    assert internal_id(lc, person=OWNER, conversation_id="fresh") == "fresh"
    assert internal_id(lc, person="alice", conversation_id="fresh") == "fresh~alice"
    for person in ("alice", "bob"):
        stored = internal_id(lc, person=person, conversation_id="same")
        lc.submit(conversation_id=stored, text=f"{person} です", tokens=3, owner=person)
    assert lc.owner_of("same~alice") == "alice" and lc.owner_of("same~bob") == "bob"
    assert external_id("same~alice") == external_id("same") == "same"
