"""Regenerate, choose, continue and edit on the newest turn, through the real stack: API,
worker, the simulator via the SDK, and the recall index in Redis."""

from __future__ import annotations

from typing import Any

import httpx
import redis

from core import keys
from core.history import history_store
from core.turns import CONTINUE_PROMPT
from mysisterdb.simulator import reply_chunks
from tests.api.test_conversations import by_turn
from tests.procs import Stack


def turn_url(stack: Stack, cid: str, turn: int, action: str) -> str:
    return f"{stack.api_url}/api/conversations/{cid}/turns/{turn}/{action}"


def accepted(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    return job


def asked_with(stack: Stack, text: str) -> dict[str, Any]:
    """The last generate request whose contents hold `text` (the simulator is shared)."""
    calls = httpx.get(f"{stack.sim_url}/_sim/calls", timeout=5).json()
    bodies = [c["body"] for c in calls if "generatecontent" in c["path"].lower()
              and isinstance(c["body"], dict)
              and any(text in p.get("text", "") for content in c["body"].get("contents", [])
                      for p in content.get("parts", []))]
    assert bodies, f"no generate request with {text!r}"
    return bodies[-1]  # type: ignore[no-any-return]


def recalls(client: redis.Redis, cid: str, word: str) -> bool:
    """Whether the recall index finds a user message for `word`."""
    hits = history_store(client).search(cid, query=word, before_seq=10**9, limit=5,
                                        threshold=0.01)
    return any(h.message.role == "user" for h in hits)


def test_regenerate_keeps_every_reply_and_choose_picks_the_remembered_one(
        stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> None:
    cid = conversation_id
    first = stack.wait_job(stack.submit("好きな果物は？", conversation_id=cid)["id"])
    again = stack.wait_job(accepted(httpx.post(turn_url(stack, cid, 1, "regenerate"),
                                               timeout=5))["id"])
    assert again["status"] == "completed" and again["reply"] != first["reply"]
    turn = by_turn(stack, cid)[1]
    assert (turn["replies"], turn["chosen"], turn["reply"]["text"]) == (2, 1, again["reply"])
    assert "choose" in turn["actions"] and "regenerate" in turn["actions"]
    r = httpx.put(turn_url(stack, cid, 1, "chosen"), json={"index": 0}, timeout=5)
    assert r.status_code == 200, r.text
    assert (r.json()["chosen"], r.json()["reply"]["text"]) == (0, first["reply"])
    stored = history_store(stack_redis).get_many(cid, [2])
    assert [m.text for m in stored] == [first["reply"]]  # only the chosen one is remembered
    r = httpx.put(turn_url(stack, cid, 1, "chosen"), json={"index": 2}, timeout=5)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


def test_a_regenerated_reply_is_what_the_next_prompt_sees(
        stack: Stack, conversation_id: str) -> None:
    cid = conversation_id
    stack.wait_job(stack.submit("一つ目", conversation_id=cid)["id"])
    again = stack.wait_job(accepted(httpx.post(turn_url(stack, cid, 1, "regenerate"),
                                               timeout=5))["id"])
    stack.wait_job(stack.submit("二つ目", conversation_id=cid)["id"])
    body = asked_with(stack, "二つ目")
    models = ["".join(p["text"] for p in c["parts"]) for c in body["contents"]
              if c["role"] == "model"]
    assert models == [again["reply"]]


def test_turn_actions_are_refused_while_running_and_on_older_turns(
        stack: Stack, conversation_id: str) -> None:
    cid, name = conversation_id, f"hold-{conversation_id}"
    stack.wait_job(stack.submit("最初", conversation_id=cid)["id"])
    running = stack.submit(f"待ってね #sim:hold={name}", conversation_id=cid)
    try:
        for action in ("regenerate", "continue"):
            r = httpx.post(turn_url(stack, cid, 2, action), timeout=5)
            assert r.status_code == 409, r.text
        r = httpx.put(turn_url(stack, cid, 2, "message"), json={"message": "直した"}, timeout=5)
        assert r.status_code == 409
    finally:
        httpx.post(f"{stack.sim_url}/_sim/release/{name}", timeout=5)
    stack.wait_job(running["id"])
    older = httpx.post(turn_url(stack, cid, 1, "regenerate"), timeout=5)
    assert older.status_code == 409 and "分岐" in older.json()["error"]["message"]
    assert httpx.post(turn_url(stack, cid, 3, "regenerate"), timeout=5).status_code == 404
    assert httpx.post(turn_url(stack, "nobody-here", 1, "regenerate"),
                      timeout=5).status_code == 404


def test_continue_appends_to_the_same_reply(stack: Stack, stack_redis: redis.Redis,
                                           conversation_id: str) -> None:
    cid = conversation_id
    cut = stack.wait_job(stack.submit("長い話して #sim:stall", conversation_id=cid)["id"])
    assert cut["status"] == "incomplete" and cut["partial_reply"]
    going = accepted(httpx.post(turn_url(stack, cid, 1, "continue"), timeout=5))
    assert going["partial_reply"] == cut["partial_reply"]  # starts where it stopped
    done = stack.wait_job(going["id"])
    assert done["status"] == "completed"
    assert done["reply"].startswith(cut["partial_reply"]) and len(done["reply"]) > len(
        cut["partial_reply"])
    asked = asked_with(stack, CONTINUE_PROMPT)
    assert asked["contents"][-2] == {"role": "model", "parts": [{"text": cut["partial_reply"]}]}
    turn = by_turn(stack, cid)[1]
    assert (turn["state"], turn["reply"]["text"]) == ("completed", done["reply"])
    more = stack.wait_job(accepted(httpx.post(turn_url(stack, cid, 1, "continue"),
                                              timeout=5))["id"])
    assert more["reply"].startswith(done["reply"]) and len(more["reply"]) > len(done["reply"])
    assert [m.text for m in history_store(stack_redis).get_many(cid, [2])] == [more["reply"]]


def test_edit_replaces_the_message_and_recall_forgets_the_old_text(
        stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> None:
    cid = conversation_id
    stack.wait_job(stack.submit("ぼくの猫の名前はタマ", conversation_id=cid)["id"])
    assert recalls(stack_redis, cid, "タマ")
    r = httpx.put(turn_url(stack, cid, 1, "message"), json={"message": "   "}, timeout=5)
    assert r.status_code == 422  # validated like a new message, and nothing changed
    assert recalls(stack_redis, cid, "タマ")
    edited = stack.wait_job(accepted(httpx.put(turn_url(stack, cid, 1, "message"),
                                               json={"message": "ぼくの猫の名前はミケ"},
                                               timeout=5))["id"])
    assert edited["reply"] == "".join(reply_chunks("ぼくの猫の名前はミケ"))
    turn = by_turn(stack, cid)[1]
    assert turn["user"]["text"] == "ぼくの猫の名前はミケ" and turn["reply"]["text"] == edited["reply"]
    assert turn["replies"] == 1
    assert not recalls(stack_redis, cid, "タマ") and recalls(stack_redis, cid, "ミケ")
    assert stack_redis.hlen(keys.conv_alternatives(cid)) == 0


def test_states_table_is_served(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/api/states", timeout=5)
    assert r.status_code == 200
    table = r.json()
    assert table["job_states"]["incomplete"] == {"final": True, "retryable": True,
                                                 "label": "途中で止まりました"}
    assert "continue" in table["turn_states"]["incomplete"]["actions"]
    cancelled = table["turn_states"]["cancelled"]
    assert (cancelled["ending"], cancelled["quiet"]) == ("停止しました。", True)
    assert table["turn_states"]["completed"]["ending"] is None
    assert set(table["newest_only"]) >= {"regenerate", "edit", "continue", "choose"}
