"""Replacing and removing a stored message: the recall index forgets the old text.

Every test compares the index with the one the stored messages would get if appended
afresh (`_expected`): same document count and length, same postings per term, no term
left without postings, so BM25's statistics stay right, not only the searches tried.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context.memory_store import InMemoryHistoryStore
from context.redis_store import RedisHistoryStore, StoreKeys, unpack_seqs
from context.terms import analyse
from context.types import Message
from context.vectors import RedisVectorStore
from core import keys
from tests.context.chatgen import ChatGenerator, make_message

OLD = "京都で湯豆腐を食べたよ"
NEW = "札幌でジンギスカンを食べたよ"  # 食べる is in both texts


@dataclass(frozen=True)
class IndexState:
    docs: int
    words: int
    postings: dict[str, list[int]]  # term -> seqs, sorted


def _expected(messages: list[Message]) -> IndexState:
    postings: dict[str, list[int]] = {}
    for message in messages:
        for term in analyse(message.text).weights:
            postings.setdefault(term, []).append(message.seq)
    return IndexState(docs=len(messages), words=sum(analyse(m.text).length for m in messages),
                      postings={t: sorted(s) for t, s in postings.items()})


def _redis_state(client: redis.Redis, k: StoreKeys, slot: str) -> IndexState:
    prefix = k.postings(slot, "")
    by_key = {key.decode()[len(prefix):]: sorted(unpack_seqs(client.get(key) or b""))
              for key in client.scan_iter(match=prefix + "*")}
    vocab = {t.decode() for t in client.smembers(k.vocab(slot))}
    assert vocab == set(by_key), "the vocabulary lists exactly the postings keys"
    docs = {int(s) for s in client.hkeys(k.docs(slot))}
    stats = client.hgetall(k.stats(slot))
    assert int(stats.get(b"docs", 0)) == len(docs), "stats count the docs hash"
    return IndexState(docs=len(docs), words=int(stats.get(b"words", 0)), postings=by_key)


def _memory_state(store: InMemoryHistoryStore, cid: str) -> IndexState:
    conv = store._conv(cid)
    return IndexState(docs=len(conv.seqs), words=conv.words,
                      postings={t: sorted(s) for t, s in conv.postings.items()})


Store = RedisHistoryStore | InMemoryHistoryStore


@dataclass
class Subject:
    store: Store
    state: Callable[[], IndexState]  # the index of conversation "c" (live slot for Redis)


@pytest.fixture(params=["memory", "redis"])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "memory":
        memory = InMemoryHistoryStore()
        return Subject(memory, lambda: _memory_state(memory, "c"))
    client: redis.Redis = request.getfixturevalue("redis_client")
    store = RedisHistoryStore(client, key_of=keys.conv_key)
    return Subject(store, lambda: _redis_state(client, store.keys("c"), store.live_slot("c")))


def _seqs_found(store: Store, query: str) -> set[int]:
    hits = store.search("c", query=query, before_seq=10**9, limit=50, threshold=0.1)
    return {h.message.seq for h in hits}


def _stored(store: Store) -> list[Message]:
    return store.last("c", limit=1000)


def test_replace_forgets_the_old_terms_and_indexes_the_new(subject: Subject) -> None:
    store = subject.store
    history = list(ChatGenerator(seed=2).messages(6))
    for message in history:
        store.append("c", message)
    store.append("c", make_message(7, "user", OLD))
    assert _seqs_found(store, "湯豆腐") == {7}
    edited = make_message(7, "user", NEW)
    assert store.replace("c", edited) is True
    assert _stored(store) == [*history, edited]
    assert _seqs_found(store, "湯豆腐") == set()
    assert _seqs_found(store, "ジンギスカン") == {7}
    assert 7 in _seqs_found(store, "食べる")
    assert subject.state() == _expected(_stored(store))
    if isinstance(store, RedisHistoryStore):
        assert store.check_index("c").ok


def test_remove_forgets_the_message_and_frees_its_seq(subject: Subject) -> None:
    store = subject.store
    for message in ChatGenerator(seed=3).messages(6):
        store.append("c", message)
    store.append("c", make_message(7, "user", OLD))
    store.append("c", make_message(8, "assistant", "湯豆腐いいな！"))
    assert store.remove("c", 8) is True
    assert [m.seq for m in _stored(store)] == [1, 2, 3, 4, 5, 6, 7]
    assert _seqs_found(store, "湯豆腐") == {7}
    assert subject.state() == _expected(_stored(store))
    store.remove("c", 7)
    assert _seqs_found(store, "湯豆腐") == set()
    assert subject.state() == _expected(_stored(store))
    store.append("c", make_message(7, "user", NEW))  # e.g. a continue writing a new reply
    assert _seqs_found(store, "ジンギスカン") == {7}
    assert subject.state() == _expected(_stored(store))
    if isinstance(store, RedisHistoryStore):
        assert store.check_index("c").ok


def test_replace_and_remove_never_store_a_message_where_there_is_none(subject: Subject) -> None:
    store = subject.store
    store.append("c", make_message(1, "user", OLD))
    assert store.replace("c", make_message(2, "assistant", NEW)) is False
    assert store.remove("c", 2) is False
    assert _stored(store) == [make_message(1, "user", OLD)]
    assert subject.state() == _expected(_stored(store))


# -- Redis only: vectors, the caller's MULTI, a re-index running meanwhile ---------------


def test_replace_and_remove_drop_that_seq_s_vector_only(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    vectors = RedisVectorStore(redis_client, keys.conv_key)
    for seq in (1, 2, 3):
        store.append("c", make_message(seq, "user" if seq % 2 else "assistant", OLD))
    vectors.store("c", [(seq, [1.0, float(seq)]) for seq in (1, 2, 3)])
    store.replace("c", make_message(2, "assistant", NEW))
    # What the embedding task looks for (workers/embeddings.py): seq 2 is missing again.
    assert vectors.embedded_seqs("c", after_seq=0, before_seq=4) == {1, 3}
    store.remove("c", 3)
    assert vectors.embedded_seqs("c", after_seq=0, before_seq=4) == {1}


def test_replace_and_remove_join_the_caller_s_transaction(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    store.append("c", make_message(1, "user", OLD))
    store.append("c", make_message(2, "assistant", "はーい"))
    with redis_client.pipeline() as pipe:
        pipe.multi()
        assert store.replace("c", make_message(1, "user", NEW), pipe=pipe) is None
        store.remove("c", 2, pipe=pipe)
        store.remove("c", 9, pipe=pipe)
        assert [m.text for m in _stored(store)] == [OLD, "はーい"]  # queued, not applied
        assert pipe.execute() == [1, 1, 0]
    assert _stored(store) == [make_message(1, "user", NEW)]
    assert _redis_state(redis_client, store.keys("c"), "1") == _expected(_stored(store))


class _EditingStore(RedisHistoryStore):
    """While the re-index holds each batch (read, not yet indexed), the chat edits: the
    batch's first message is replaced and its last removed."""

    def _index_batch(self, k: StoreKeys, slot: str, messages: list[Message]) -> int:
        first, last = messages[0], messages[-1]
        self.replace(k.cid, make_message(first.seq, first.role, f"{NEW}{first.seq}"))
        self.remove(k.cid, last.seq)
        return super()._index_batch(k, slot, messages)


def _numbered(store: RedisHistoryStore, count: int) -> None:
    """`count` messages, each with OLD's terms and a number of its own."""
    store.append_many("c", (make_message(m.seq, m.role, f"{OLD}{m.seq}")
                            for m in ChatGenerator().messages(count)))


def test_a_reindex_does_not_bring_back_what_was_replaced_or_removed_meanwhile(
    redis_client: redis.Redis,
) -> None:
    store = _EditingStore(redis_client, key_of=keys.conv_key)
    _numbered(store, 250)
    store.rebuild_index("c", batch=100)  # batches 1-100, 101-200, 201-250
    assert [m.seq for m in _stored(store) if m.text.startswith(NEW)] == [1, 101, 201]
    assert len(_stored(store)) == 250 - 3
    assert store.check_index("c").ok
    assert _redis_state(redis_client, store.keys("c"), store.live_slot("c")) == \
        _expected(_stored(store))
    assert _seqs_found(store, "ジンギスカン") == {1, 101, 201}


def test_edits_while_a_crashed_reindex_waits_are_in_the_slot_it_resumes(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=keys.conv_key)
    _numbered(store, 300)

    class Crashing(RedisHistoryStore):
        def _index_batch(self, k: StoreKeys, slot: str, messages: list[Message]) -> int:
            if messages[0].seq > 100:
                raise ConnectionError("killed half way")
            return super()._index_batch(k, slot, messages)

    with pytest.raises(ConnectionError):
        Crashing(redis_client, key_of=keys.conv_key).rebuild_index("c", batch=100)
    building = redis_client.get(keys.conv_context("c", "build"))
    assert building is not None and building.decode() != store.live_slot("c")
    # 50 is in the half built slot already, 250 not yet.
    for seq in (50, 250):
        store.replace("c", make_message(seq, "assistant", NEW))
    for seq in (60, 260):
        store.remove("c", seq)
    for slot in ("1", "2"):
        state = _redis_state(redis_client, store.keys("c"), slot)
        assert 50 in state.postings["ジンギスカン"] and 60 not in state.postings["京都"]
    store.rebuild_index("c", batch=100)
    assert store.check_index("c").ok
    assert _redis_state(redis_client, store.keys("c"), store.live_slot("c")) == \
        _expected(_stored(store))
    assert _seqs_found(store, "ジンギスカン") == {50, 250}


def test_a_key_layout_that_does_not_end_keys_with_the_name_is_refused(
    redis_client: redis.Redis,
) -> None:
    store = RedisHistoryStore(redis_client, key_of=lambda cid, name: f"{name}@{cid}")
    store.append("c", make_message(1, "user", OLD))
    with pytest.raises(ValueError, match="ends its keys with the name"):
        store.replace("c", make_message(1, "user", NEW))
    assert _stored(store) == [make_message(1, "user", OLD)]


# -- any sequence of writes leaves the index a fresh one would be -----------------------

_TEXT = st.text(st.sampled_from(list("京都ラーメン札幌カレー猫が好きabc 12。")), max_size=40)
_OPS = st.lists(st.tuples(st.sampled_from(["append", "replace", "remove"]),
                          st.integers(1, 8), _TEXT), max_size=25)
_cids = itertools.count()


def _apply(store: Store, cid: str, ops: list[tuple[str, int, str]]) -> None:
    for op, seq, text in ops:
        message = make_message(seq, "user" if seq % 2 else "assistant", text)
        if op == "append":
            store.append(cid, message)
        elif op == "replace":
            store.replace(cid, message)
        else:
            store.remove(cid, seq)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_any_writes_leave_the_index_of_what_is_stored(
    redis_client: redis.Redis, ops: list[tuple[str, int, str]],
) -> None:
    cid = f"p{next(_cids)}"  # the database is flushed per test, not per example
    memory, on_redis = InMemoryHistoryStore(), RedisHistoryStore(redis_client, key_of=keys.conv_key)
    _apply(memory, cid, ops)
    _apply(on_redis, cid, ops)
    stored = on_redis.last(cid, limit=100)
    assert memory.last(cid, limit=100) == stored
    assert _memory_state(memory, cid) == _expected(stored)
    assert _redis_state(redis_client, on_redis.keys(cid), "1") == _expected(stored)
    assert on_redis.check_index(cid).ok
    for query in ("ラーメン", "札幌のカレー", "猫"):
        assert [h.message.seq for h in memory.search(cid, query=query, before_seq=99, limit=9,
                                                      threshold=0.1)] == \
            [h.message.seq for h in on_redis.search(cid, query=query, before_seq=99, limit=9,
                                                    threshold=0.1)]
