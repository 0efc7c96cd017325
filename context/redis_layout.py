"""Where the Redis HistoryStore keeps a conversation, and how it packs what it keeps there.

The caller says where keys live: `key_of(conversation_id, name)` (the application builds
it from its key module; this library imports nothing of it).  Names used, per
conversation (no TTL):

    messages              zset    score = seq, member = Message JSON
    summary               hash    text, covers_up_to_seq, tokens
    ctx:live              string  the index slot searches read: "1" (also when absent) or "2"
    ctx:build             string  the slot a re-index is building, while it runs
    ctx:done              set     seqs already in the slot being built (no double posting)
    ctx:{slot}:stats      hash    docs (messages indexed), words (their total length)
    ctx:{slot}:vocab      set     every term that has a postings key in the slot
    ctx:{slot}:docs       hash    seq -> the message's indexed terms and length (scoring a
                                  candidate needs no re-analysis of its text)
    ctx:{slot}:p:{term}   string  postings: seqs of the messages holding the term,
                                  8-byte little-endian each, in storage order
    ctx:vocab, ctx:p:{term}       the index of the version before slots (bigram terms),
                                  deleted by the first re-index
    ctx:vec               zset    the messages' quantized embeddings (context/vectors.py);
                                  deleted here with the rest, and by a renumber (the
                                  seqs they point at move: `reindex --embeddings` again);
                                  a seq's own by replace and remove (see docs/context.md)

A postings list is a string appended to (O(1)): its length / 8 is the term's document
frequency, and its tail is the term's most recent postings (one GETRANGE), so a search
never reads more than a fixed number of bytes per term, however long the history.

Everything here is shared by the store (context/redis_store.py) and its index maintenance
(context/redis_index.py).
"""

from __future__ import annotations

import json
import logging
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from context.types import Message

logger = logging.getLogger(__name__)

POSTING_BYTES = 8
BATCH = 500
SLOTS = ("1", "2")

KeyOf = Callable[[str, str], str]


def pack_seq(seq: int) -> bytes:
    return seq.to_bytes(POSTING_BYTES, "little", signed=True)


def unpack_seqs(raw: bytes) -> list[int]:
    usable = len(raw) - len(raw) % POSTING_BYTES
    values = array("q")
    values.frombytes(raw[:usable])
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def other_slot(slot: str) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]

def text_of(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def with_seq(raw: bytes | str, seq: int) -> str:
    """A stored member with a new seq and every other field as it was (also fields this
    version does not know)."""
    data = json.loads(raw)
    data["seq"] = seq
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def int_of(value: Any) -> int:
    return int(value) if value is not None else 0


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def readable(raws: Iterable[Any], *, conversation_id: str) -> Iterator[Message]:
    """The messages that parse; an unreadable one is skipped (and left for `check`)."""
    for raw in raws:
        try:
            yield Message.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("conversation %s: unreadable message skipped: %s", conversation_id,
                           exc)


@dataclass(frozen=True, slots=True)
class StoreKeys:
    """The keys of one conversation, from the caller's `key_of(conversation_id, name)`."""

    key_of: KeyOf
    cid: str

    def messages(self) -> str:
        return self.key_of(self.cid, "messages")

    def summary(self) -> str:
        return self.key_of(self.cid, "summary")

    def ctx(self, name: str) -> str:
        return self.key_of(self.cid, "ctx:" + name)

    def stats(self, slot: str) -> str:
        return self.ctx(f"{slot}:stats")

    def vocab(self, slot: str) -> str:
        return self.ctx(f"{slot}:vocab")

    def docs(self, slot: str) -> str:
        return self.ctx(f"{slot}:docs")

    def postings(self, slot: str, term: str) -> str:
        return self.ctx(f"{slot}:p:{term}")

    def postings_prefix(self, slot: str) -> str:
        """What every postings key of the slot starts with, the term following: a script
        that finds terms in Redis (the old text's, for replace and remove) builds their
        keys from it.  ValueError for a `key_of` that does not end its keys with the name."""
        prefix = self.postings(slot, "")
        if self.postings(slot, "\t") != prefix + "\t":
            raise ValueError("replacing or removing messages needs a key_of(cid, name) that "
                             "ends its keys with the name")
        return prefix

    def legacy_vocab(self) -> str:
        return self.ctx("vocab")

    def legacy_postings(self, term: str) -> str:
        return self.ctx("p:" + term)

