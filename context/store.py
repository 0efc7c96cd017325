"""The storage interface the builder and the summary policy use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from context.relevance import SearchConfig
from context.types import Message, ScoredMessage, Summary


class HistoryStore(Protocol):
    """Messages of each conversation (ordered by seq), their relevance index, the summary."""

    def append(self, conversation_id: str, message: Message) -> None:
        """Store a message and index it; storing the same seq again does nothing."""
        ...

    def replace(self, conversation_id: str, message: Message) -> bool:
        """Put `message` in place of the stored message at its seq, and its terms in place
        of the old text's in the index (searches then find it by the new text only);
        False, storing nothing, when no message is stored at that seq.  The Redis store
        also deletes the seq's vector and takes `pipe=` as `append` does."""
        ...

    def remove(self, conversation_id: str, seq: int) -> bool:
        """Delete the message at `seq` and its index entries (False when there is none);
        the seq may then be appended again."""
        ...

    def last(self, conversation_id: str, *, limit: int) -> list[Message]:
        """The last `limit` messages, oldest first."""
        ...

    def before(self, conversation_id: str, *, before_seq: int, limit: int) -> list[Message]:
        """The last `limit` messages with seq < before_seq, oldest first."""
        ...

    def between(
        self, conversation_id: str, *, after_seq: int, before_seq: int, limit: int
    ) -> list[Message]:
        """The first `limit` messages with after_seq < seq < before_seq, oldest first."""
        ...

    def get_many(self, conversation_id: str, seqs: Sequence[int]) -> list[Message]:
        """The stored messages with these seqs, in seq order (missing ones skipped)."""
        ...

    def search(
        self, conversation_id: str, *, query: str, before_seq: int, limit: int,
        threshold: float, config: SearchConfig | None = None,
    ) -> list[ScoredMessage]:
        """Messages with seq < before_seq relevant to `query` (score >= threshold), best first
        (see context.relevance: BM25 normalised to 0..1, newer first on the same subject)."""
        ...

    def get_summary(self, conversation_id: str) -> Summary | None: ...

    def set_summary(self, conversation_id: str, summary: Summary) -> bool:
        """Store the summary unless the stored one already covers as far, or the conversation
        has no messages (deleted while the summary was written); True if stored."""
        ...

    def reset(self, conversation_id: str) -> None:
        """Forget the conversation: messages, index and summary."""
        ...
