"""Running summaries happen off the hot path and never fail a chat job."""

from __future__ import annotations

import re

import redis

from context.redis_store import RedisHistoryStore
from core import keys
from tests.procs import Stack, wait_for

SUMMARY_MARKER = "記録係"  # words of the summary prompt, not of any chat prompt


def chat(stack: Stack, conversation_id: str, texts: list[str]) -> list[dict[str, object]]:
    jobs = [stack.submit(t, conversation_id=conversation_id) for t in texts]
    return [stack.wait_job(j["id"]) for j in jobs]


def test_turns_leaving_the_window_are_folded_into_a_summary(stack: Stack,
                                                            stack_redis: redis.Redis,
                                                            conversation_id: str) -> None:
    texts = [f"話題{i}: {conversation_id}" for i in range(5)]
    assert all(j["status"] == "completed" for j in chat(stack, conversation_id, texts))
    store = RedisHistoryStore(stack_redis, key_of=keys.conv_key)
    wait_for(lambda: store.get_summary(conversation_id) is not None, timeout_s=15,
             what="a summary")
    summary = store.get_summary(conversation_id)
    assert summary is not None and summary.text and summary.tokens > 0
    folded = [r for r in stack.sim_requests_containing(SUMMARY_MARKER)
              if f"話題0: {conversation_id}" in str(r)]
    assert folded, "the summary was asked of Gemini with the oldest turn in it"
    job = chat(stack, conversation_id, [f"次の話 {conversation_id}"])[0]
    assert job["status"] == "completed"
    assert "summary yes" in str(job["steps"][1]["detail"])  # type: ignore[index]
    body = stack.sim_requests_containing(f"次の話 {conversation_id}")[-1]
    system = "".join(p["text"] for p in body["systemInstruction"]["parts"])
    assert summary.text in system


def test_a_failing_summary_never_fails_chat_jobs(stack: Stack, stack_redis: redis.Redis,
                                                 conversation_id: str) -> None:
    # The first turn carries an error directive: every summary prompt that folds it fails.
    first = chat(stack, conversation_id, [f"#sim:error=500 {conversation_id}"])[0]
    assert first["status"] == "failed"
    later = chat(stack, conversation_id, [f"つづき{i} {conversation_id}" for i in range(5)])
    wait_for(lambda: any(f"#sim:error=500 {conversation_id}" in str(r)
                         for r in stack.sim_requests_containing(SUMMARY_MARKER)),
             timeout_s=15, what="a summary attempt")
    assert [j["status"] for j in later] == ["completed"] * 5
    assert RedisHistoryStore(stack_redis, key_of=keys.conv_key).get_summary(conversation_id) is None
    # Tried again later (MYSISTERDB_SUMMARY_RETRY_S, 1 s in tests), then given up: the flag is
    # released so that the conversation's next chat job can queue a summary again.
    wait_for(lambda: not stack_redis.exists(keys.conv_summarizing(conversation_id)),
             timeout_s=30, what="the failing summary to give up")
    log = stack.procs["summary-worker" if "summary-worker" in stack.procs else "worker"].log()
    assert re.search(rf"summary of {conversation_id} failed \(.*\); retrying later", log)
