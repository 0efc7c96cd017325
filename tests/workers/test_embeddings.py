"""Semantic recall through the real pipeline: API -> Celery worker (prefork) -> real SDK ->
the simulator's embedding endpoints (whose only "meaning" is a small concept table:
mysisterdb/simulator.py CONCEPTS), with MYSISTERDB_EMBEDDINGS=on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from context.builder import build_context
from context.types import Message
from core import keys
from core.history import history_store, vector_store
from core.settings import DEFAULT_PERSONA
from mysisterdb.redis_server import RedisServer
from tests.conftest import own_stack
from tests.context.chatgen import ChatGenerator, make_message
from tests.procs import ROOT, Stack, wait_for

EMBEDDINGS_DB = 6  # its own stack: embeddings on, which the shared stack leaves off (auto)
TURNS = 150
FACT_TURN = 12
FACT = "ぼくの誕生日は8月3日なんだ"
QUESTION = "生まれたのっていつだっけ？"  # not one word in common with the fact


@pytest.fixture(scope="module")
def embedding_stack(redis_server: RedisServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=EMBEDDINGS_DB, name="embeddings",
                         extra={"MYSISTERDB_EMBEDDINGS": "on"})


@pytest.fixture
def client(embedding_stack: Stack) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(embedding_stack.redis_url, socket_timeout=5)
    yield connection
    connection.close()


def vectors_of(client: redis.Redis, cid: str) -> set[int]:
    return vector_store(client).embedded_seqs(cid, after_seq=0, before_seq=10 ** 9)


def build_detail(job: dict[str, Any]) -> str:
    return str(job["steps"][1]["detail"])


def plant(client: redis.Redis, cid: str, *, turns: int = TURNS) -> None:
    """`turns` exchanges of chat, the fact at FACT_TURN if there are that many, as if typed
    before embeddings were on (no vectors)."""
    messages = list(ChatGenerator(seed=11).messages(2 * turns, first_seq=1))
    if turns >= FACT_TURN:
        messages[2 * FACT_TURN - 2] = make_message(2 * FACT_TURN - 1, "user", FACT)
    history_store(client).append_many(cid, messages)
    client.set(keys.conv_turn(cid), turns)
    client.sadd(keys.conversations(), cid)


def lexical_prompt(client: redis.Redis, cid: str) -> str:
    """The prompt the lexical recall alone builds for the question (the control)."""
    question = Message(seq=2 * TURNS + 1, role="user", text=QUESTION, tokens=20, created_at="")
    built = build_context(store=history_store(client), conversation_id=cid, new_message=question,
                          persona=DEFAULT_PERSONA.read_text(encoding="utf-8"))
    return built.system_instruction


def reindex_embeddings(stack: Stack, cid: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mysisterdb", "reindex", "--embeddings",
                           "--conversation", cid], env=stack.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def prompt_of(stack: Stack, marker: str) -> str:
    body = stack.sim_requests_asking(marker)[-1]
    system = [p["text"] for p in body.get("systemInstruction", {}).get("parts", [])]
    return "\n".join(system + [p["text"] for c in body["contents"] for p in c["parts"]])


def test_each_stored_message_gets_an_embedding_after_the_reply(
        embedding_stack: Stack, client: redis.Redis, conversation_id: str) -> None:
    plant(client, conversation_id, turns=5)
    job = embedding_stack.wait_job(embedding_stack.submit(
        "こんにちは", conversation_id=conversation_id)["id"])
    assert job["status"] == "completed", job
    assert "semantic: no vectors" in build_detail(job)  # nothing to compare with yet
    # The tail task embeds the new exchange, and the recent messages that had none.
    wait_for(lambda: vectors_of(client, conversation_id) == set(range(1, 13)), timeout_s=20,
             what="the question's and the reply's embeddings")
    wait_for(lambda: not client.exists(keys.conv_embedding(conversation_id)), timeout_s=10,
             what="the embedding task's flag released")
    second = embedding_stack.wait_job(embedding_stack.submit(
        "元気？", conversation_id=conversation_id)["id"])
    # Older than the recent window (seqs 7..12): seqs 1..6.
    assert "of 6 vectors" in build_detail(second), build_detail(second)


def test_paraphrase_is_recalled_through_the_embeddings(
        embedding_stack: Stack, client: redis.Redis, conversation_id: str) -> None:
    plant(client, conversation_id)
    assert FACT not in lexical_prompt(client, conversation_id), "lexical recall alone misses it"
    done = reindex_embeddings(embedding_stack, conversation_id)
    assert done.returncode == 0, done.stderr
    assert "1 conversations queued" in done.stdout
    wait_for(lambda: len(vectors_of(client, conversation_id)) == 2 * TURNS, timeout_s=60,
             what="the backfill of every planted message")
    job = embedding_stack.wait_job(embedding_stack.submit(
        QUESTION, conversation_id=conversation_id)["id"])
    assert job["status"] == "completed", job
    assert f"of {2 * TURNS - 6} vectors" in build_detail(job)  # all but the recent window
    assert FACT in prompt_of(embedding_stack, QUESTION)


@pytest.mark.parametrize("directive", ["#sim-embed:hang", "#sim-embed:error=500"])
def test_failing_embeddings_leave_the_chat_job_completed(
        embedding_stack: Stack, client: redis.Redis, conversation_id: str,
        directive: str) -> None:
    plant(client, conversation_id, turns=5)
    first = embedding_stack.wait_job(embedding_stack.submit(
        "おはよう", conversation_id=conversation_id)["id"])
    assert first["status"] == "completed", first
    embedded = set(range(1, 13))
    wait_for(lambda: vectors_of(client, conversation_id) == embedded, timeout_s=20,
             what="the history embedded")
    wait_for(lambda: not client.exists(keys.conv_embedding(conversation_id)), timeout_s=10,
             what="the first embedding task done")
    # The question's own embedding (on the reply path) and the background task both fail.
    job = embedding_stack.wait_job(embedding_stack.submit(
        f"きょうは何する？ {directive}", conversation_id=conversation_id)["id"])
    assert job["status"] == "completed", job
    assert "semantic: lexical only (no query embedding)" in build_detail(job)
    wait_for(lambda: not client.exists(keys.conv_embedding(conversation_id)), timeout_s=30,
             what="the failed embedding task's flag released")
    assert vectors_of(client, conversation_id) == embedded  # 13 and 14 failed
    assert embedding_stack.job(job["id"])["status"] == "completed"
