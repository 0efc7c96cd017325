"""POST /api/chat and the conversation endpoints, against the real stack."""

from __future__ import annotations

import httpx
import pytest
import redis

from core import keys
from tests.procs import Stack, wait_for

STEP_NAMES = ["load_history", "build_context", "generate", "save"]


def messages(stack: Stack, conversation_id: str) -> list[dict[str, object]]:
    """The history's turns as the messages they hold, with the turn's job id."""
    r = httpx.get(f"{stack.api_url}/api/conversations/{conversation_id}/messages", timeout=5)
    assert r.status_code == 200, r.text
    flat: list[dict[str, object]] = []
    for turn in r.json()["turns"]:
        job_id = turn["job"]["id"] if turn["job"] else None
        for role, message in (("user", turn["user"]), ("assistant", turn["reply"])):
            if message is not None:
                flat.append({"role": role, "job_id": job_id, **message})
    return flat


def test_submit_answers_202_with_location_and_completes_every_step(stack: Stack,
                                                                    conversation_id: str) -> None:
    r = httpx.post(f"{stack.api_url}/api/chat", timeout=5,
                   json={"message": "こんにちは", "conversation_id": conversation_id})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["status"] in ("queued", "in_progress")
    done = stack.wait_job(job["id"])
    assert done["status"] == "completed", done
    assert [s["name"] for s in done["steps"]] == STEP_NAMES
    assert all(s["status"] == "completed" and s["started_at"] and s["completed_at"]
               for s in done["steps"])
    assert done["reply"] and done["partial_reply"] == done["reply"]
    assert done["error"] is None
    assert done["created_at"].endswith("Z") and done["completed_at"].endswith("Z")


def test_masumoto_question_that_froze_the_old_server_is_answered(stack: Stack,
                                                                 conversation_id: str) -> None:
    job = stack.submit("枡元といえば？ｗ", conversation_id=conversation_id)
    done = stack.wait_job(job["id"])
    assert done["status"] == "completed"
    assert "枡元といえば？ｗ" in done["reply"]
    history = messages(stack, conversation_id)
    assert [(m["role"], m["text"]) for m in history] == [
        ("user", "枡元といえば？ｗ"), ("assistant", done["reply"])]


def test_a_finished_step_is_visible_while_the_job_runs(stack: Stack,
                                                      conversation_id: str) -> None:
    # The reply streaming into partial_reply is tested in test_streaming.py (#sim:hold).
    job = stack.submit("ゆっくり話して #sim:sleep=0.5", conversation_id=conversation_id)
    seen = stack.wait_job(job["id"], until=lambda j: j["steps"][0]["status"] == "completed")
    assert seen["status"] == "in_progress"  # a finished step is visible while the job runs
    done = stack.wait_job(job["id"])
    assert done["status"] == "completed"


def test_idempotency_key_returns_the_same_job(stack: Stack, conversation_id: str) -> None:
    headers = {"Idempotency-Key": f"key-{conversation_id}"}
    first = stack.submit("一回だけ", conversation_id=conversation_id, headers=headers)
    second = stack.submit("一回だけ", conversation_id=conversation_id, headers=headers)
    assert first["id"] == second["id"]
    stack.wait_job(first["id"])
    assert [m["role"] for m in messages(stack, conversation_id)] == ["user", "assistant"]


def test_two_jobs_of_one_conversation_run_in_order(stack: Stack, conversation_id: str) -> None:
    first = stack.submit("ひとつめ #sim:sleep=1", conversation_id=conversation_id)
    second = stack.submit("ふたつめ", conversation_id=conversation_id)
    one, two = stack.wait_job(first["id"]), stack.wait_job(second["id"])
    assert one["status"] == two["status"] == "completed"
    assert two["started_at"] >= one["completed_at"]
    history = messages(stack, conversation_id)
    assert [(m["role"], m["job_id"]) for m in history] == [
        ("user", first["id"]), ("assistant", first["id"]),
        ("user", second["id"]), ("assistant", second["id"])]
    assert [m["seq"] for m in history] == sorted(m["seq"] for m in history)


def test_second_job_sees_first_reply_in_its_prompt(stack: Stack, conversation_id: str) -> None:
    first = stack.submit("猫の名前はミケだよ #sim:sleep=0.5", conversation_id=conversation_id)
    second = stack.submit(f"ミケの話 {conversation_id}", conversation_id=conversation_id)
    reply = stack.wait_job(first["id"])["reply"]
    stack.wait_job(second["id"])
    body = stack.sim_requests_containing(f"ミケの話 {conversation_id}")[-1]
    texts = [p["text"] for c in body["contents"] for p in c["parts"]]
    assert texts[-3:] == ["猫の名前はミケだよ #sim:sleep=0.5", reply, f"ミケの話 {conversation_id}"]


def test_messages_limit_returns_the_last_turns(stack: Stack, conversation_id: str) -> None:
    stack.wait_job(stack.submit("a", conversation_id=conversation_id)["id"])
    stack.wait_job(stack.submit("b", conversation_id=conversation_id)["id"])
    r = httpx.get(f"{stack.api_url}/api/conversations/{conversation_id}/messages",
                  params={"limit": 1}, timeout=5)
    body = r.json()
    assert [t["user"]["text"] for t in body["turns"]] == ["b"] and body["has_more_before"]


@pytest.mark.parametrize("path", ["/api/conversations/{cid}/reset",
                                  "/api/reset_conversation?conversation_id={cid}"])
def test_reset_forgets_the_conversation(stack: Stack, conversation_id: str, path: str) -> None:
    job = stack.submit("覚えてて", conversation_id=conversation_id)
    stack.wait_job(job["id"])
    url = stack.api_url + path.format(cid=conversation_id)
    r = httpx.post(url, timeout=5) if "/reset" in path and "?" not in path else httpx.get(
        url, timeout=5)
    assert r.status_code == 200, r.text
    assert messages(stack, conversation_id) == []


BAD_BODIES = [
    ({"message": ""}, "empty"),
    ({"message": "   \n\t "}, "blank"),
    ({"message": "あ" * 8001}, "too long"),
    ({"message": "hi", "conversation_id": "bad id!"}, "bad conversation id"),
    ({"message": "hi", "conversation_id": "x" * 65}, "conversation id too long"),
    ({"message": "hi", "conversation_id": ""}, "empty conversation id"),
    ({"message": 42}, "message not a string"),
    ({}, "missing message"),
]


def quiet(client: redis.Redis) -> bool:
    """No job queued or running, no message waiting or reserved (summaries included): the
    stack writes nothing on its own, so a count of keys before and after means something
    whatever ran before this test."""
    lists = [name for queue in ("chat", "summary") for name in keys.broker_queue_lists(queue)]
    return (client.zcard(keys.active_jobs()) == 0 and client.zcard(keys.outbox()) == 0
            and client.hlen(keys.BROKER_UNACKED) == 0
            and all(client.llen(name) == 0 for name in lists))


def wait_quiet(client: redis.Redis) -> None:
    wait_for(lambda: quiet(client), timeout_s=60, what="the stack to finish earlier work")


@pytest.mark.parametrize(("body", "why"), BAD_BODIES, ids=[w for _, w in BAD_BODIES])
def test_submit_rejects_bad_input_and_stores_nothing(stack: Stack, stack_redis: redis.Redis,
                                                     body: dict[str, object], why: str) -> None:
    wait_quiet(stack_redis)
    before = stack_redis.dbsize()
    r = httpx.post(f"{stack.api_url}/api/chat", json=body, timeout=5)
    assert r.status_code == 422, (why, r.text)
    error = r.json()["error"]
    assert error["code"] in ("invalid_input", "message_too_large") and error["message"]
    assert stack_redis.dbsize() == before


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\"text\"", b""])
def test_submit_rejects_malformed_json(stack: Stack, stack_redis: redis.Redis, raw: bytes) -> None:
    wait_quiet(stack_redis)
    before = stack_redis.dbsize()
    r = httpx.post(f"{stack.api_url}/api/chat", content=raw, timeout=5,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert stack_redis.dbsize() == before


def test_rejected_message_leaves_the_conversation_untouched(stack: Stack, stack_redis: redis.Redis,
                                                            conversation_id: str) -> None:
    r = httpx.post(f"{stack.api_url}/api/chat", timeout=5,
                   json={"message": " ", "conversation_id": conversation_id})
    assert r.status_code == 422
    assert stack_redis.get(keys.conv_turn(conversation_id)) is None
    assert messages(stack, conversation_id) == []


def test_messages_rejects_bad_conversation_id(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/api/conversations/bad.id/messages", timeout=5)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_input"


def test_submit_rejects_a_message_over_the_token_budget(stack: Stack, stack_redis: redis.Redis,
                                                        conversation_id: str) -> None:
    # Under the character cap (8000) but far over the 4000-token context budget.
    kanji = "山川田中村木林森本上下石井原松竹梅花鳥風月光明春夏秋冬海空雲雪星野鬱麒麟薔薇"
    text = "".join(kanji[(i * 7) % len(kanji)] for i in range(7000))
    r = httpx.post(f"{stack.api_url}/api/chat", timeout=5,
                   json={"message": text, "conversation_id": conversation_id})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "message_too_large"
    assert "トークン" in r.json()["error"]["message"]
    assert stack_redis.get(keys.conv_turn(conversation_id)) is None


def test_chat_page_says_replies_come_from_the_simulator(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "シミュレーター" in r.text and 'data-llm-mode="simulator"' in r.text
    assert '<script type="module" src="/static/js/app.js">' in r.text
