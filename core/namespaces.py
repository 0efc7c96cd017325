"""Each person's conversation ids are their own: alice's `default` and bob's `default` are
two conversations, and no answer tells one person whether an id exists for another.

A person names a conversation (the *external* id, in URLs and bodies); Redis keys use the
*internal* id:

    the conversation's owner already holds the plain id     -> the plain id
    (data from before namespaces, or OWNER's)
    otherwise, OWNER (open and generated modes)             -> the plain id
    otherwise                                               -> "{id}~{person}"

`~` is in neither an id nor a person's name, so the two never collide, and no stored key
has to move on upgrade: a conversation written before namespaces keeps its plain id for the
person who owns it, and anyone else asking for that id gets their own, empty one. Only a
person's first write takes an internal id (the lifecycle stores its owner then).
"""

from __future__ import annotations

from typing import Protocol

from core.access import OWNER

SEPARATOR = "~"


class Owners(Protocol):
    def owner_of(self, conversation_id: str) -> str | None: ...


def internal_id(owners: Owners, *, person: str, conversation_id: str) -> str:
    if not person:  # an operator without a person of their own: the plain, global id
        return conversation_id
    owner = owners.owner_of(conversation_id)
    if owner == person or (owner is None and person == OWNER):
        return conversation_id
    return f"{conversation_id}{SEPARATOR}{person}"


def external_id(internal: str) -> str:
    return internal.split(SEPARATOR, 1)[0]
