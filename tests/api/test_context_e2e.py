"""The bounded context, end to end: API -> worker -> real SDK -> simulator (what Gemini saw)."""

from __future__ import annotations

from typing import Any

import redis

from context.redis_store import RedisHistoryStore
from context.tokens import count_tokens
from context.types import Summary
from core import keys
from tests.context.chatgen import ChatGenerator, make_message
from tests.procs import Stack, wait_for

TURNS = 3000
FACT_TURN = 5
FACT = "枡元さんの誕生日は3月12日だよ"
QUESTION = "枡元さんの誕生日いつだっけ？"
SUMMARY = "お兄ちゃんとしぃは毎日いろいろな話をしてきた。"


def plant_history(client: redis.Redis, conversation_id: str) -> None:
    """TURNS exchanges (6,000 messages) with one fact near the start, as if typed long ago,
    and summarised long ago too: otherwise the summary task would fold thousands of turns in
    the background, keeping a worker and the simulator busy under the tests that follow."""
    store = RedisHistoryStore(client, key_of=keys.conv_key)
    chat = ChatGenerator(seed=7)
    messages = list(chat.messages(count=2 * TURNS, first_seq=1))
    messages[2 * FACT_TURN - 2] = make_message(2 * FACT_TURN - 1, "user", FACT)
    store.append_many(conversation_id, messages)
    store.set_summary(conversation_id, Summary(text=SUMMARY, tokens=count_tokens(SUMMARY),
                                               covers_up_to_seq=2 * TURNS - 6))
    client.set(keys.conv_turn(conversation_id), TURNS)
    client.sadd(keys.conversations(), conversation_id)


def no_summary_pending(client: redis.Redis, conversation_id: str) -> bool:
    return not client.exists(keys.conv_summarizing(conversation_id))


def prompt_texts(body: dict[str, Any]) -> list[str]:
    system = [p["text"] for p in body.get("systemInstruction", {}).get("parts", [])]
    return system + [p["text"] for c in body["contents"] for p in c["parts"]]


def test_fact_from_thousands_of_turns_ago_is_in_the_prompt(stack: Stack, stack_redis: redis.Redis,
                                                           conversation_id: str) -> None:
    plant_history(stack_redis, conversation_id)
    job = stack.submit(f"{QUESTION} {conversation_id}", conversation_id=conversation_id)
    done = stack.wait_job(job["id"])
    assert done["status"] == "completed", done
    detail = done["steps"][1]["detail"]
    assert "recalled" in detail
    body = stack.sim_requests_containing(f"{QUESTION} {conversation_id}")[-1]
    texts = prompt_texts(body)
    assert any(FACT in t for t in texts), "the planted fact was recalled"
    assert texts[-1] == f"{QUESTION} {conversation_id}"
    assert sum(count_tokens(t) for t in texts) <= 4000
    wait_for(lambda: no_summary_pending(stack_redis, conversation_id), timeout_s=30,
             what="the summary of the new turns")


def test_prompt_keeps_the_last_three_exchanges_verbatim(stack: Stack, stack_redis: redis.Redis,
                                                        conversation_id: str) -> None:
    plant_history(stack_redis, conversation_id)
    recent = RedisHistoryStore(stack_redis, key_of=keys.conv_key).last(conversation_id, limit=6)
    job = stack.submit(f"ところで {conversation_id}", conversation_id=conversation_id)
    assert stack.wait_job(job["id"])["status"] == "completed"
    body = stack.sim_requests_containing(f"ところで {conversation_id}")[-1]
    contents = [p["text"] for c in body["contents"] for p in c["parts"]]
    assert contents[-7:-1] == [m.text for m in recent]
    wait_for(lambda: no_summary_pending(stack_redis, conversation_id), timeout_s=30,
             what="the summary of the new turns")
