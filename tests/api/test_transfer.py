"""Export, import and branch against the real stack (API, worker, simulator, Redis)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import redis

from context.builder import RECALL_HEADER
from context.tokens import count_tokens
from core import keys
from core.transfer_store import STAGING_PREFIX
from tests.api.test_context_e2e import prompt_texts
from tests.procs import Stack

FACT = "枡元さんの誕生日は3月12日だよ"
QUESTION = "枡元さんの誕生日いつだっけ？"
FILLER = ["今日は晴れてるね", "お昼はカレーにしよう", "駅前の本屋に寄った", "宿題が多いよ",
          "電車が遅れてた", "猫が窓辺で寝てる", "新しい靴を買った", "夕焼けがきれい"]


def chat(stack: Stack, cid: str, *texts: str) -> None:
    for text in texts:
        assert stack.wait_job(stack.submit(text, conversation_id=cid)["id"])["status"] == "completed"


def turns(stack: Stack, cid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.api_url}/api/conversations/{cid}/messages", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["turns"]  # type: ignore[no-any-return]


def export(stack: Stack, cid: str, fmt: str = "json") -> httpx.Response:
    return httpx.get(f"{stack.api_url}/api/conversations/{cid}/export", params={"format": fmt},
                     timeout=10)


def import_file(stack: Stack, body: bytes | Iterator[bytes], **params: str) -> httpx.Response:
    return httpx.post(f"{stack.api_url}/api/conversations/import", params=params, content=body,
                      headers={"Content-Type": "application/json"}, timeout=30)


def comparable(exported: dict[str, Any]) -> list[dict[str, Any]]:
    """What must survive a round trip: all but job ids (the copy has its own jobs)."""
    def clean(said: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in said.items() if k != "job_id"}
    return [{**t, "user": clean(t["user"]), "replies": [clean(s) for s in t["replies"]]}
            for t in exported["turns"]]


def nothing_stored(client: redis.Redis, cid: str) -> bool:
    return (not client.keys(keys.conv_prefix(cid) + "*")
            and not client.keys(keys.conv_prefix(STAGING_PREFIX + "*") + "*")
            and client.zscore(keys.conversations_by_activity(), cid) is None)


def test_export_then_import_gives_the_same_conversation(stack: Stack, stack_redis: redis.Redis,
                                                        conversation_id: str) -> None:
    cid = conversation_id
    chat(stack, cid, "こんにちは", "猫の名前を考えて")
    # Turn 2 was regenerated twice (what core/alternatives writes): the stored reply is the
    # chosen one, the hash keeps all three.
    stored = turns(stack, cid)[1]["reply"]
    def reply(text: str) -> dict[str, Any]:
        return {"text": text, "tokens": count_tokens(text), "job_id": None,
                "created_at": stored["created_at"]}

    stack_redis.hset(keys.conv_alternatives(cid), "2", json.dumps(
        {"chosen": 1, "replies": [reply("ミケはどう？"), reply(stored["text"]),
                                  reply("タマにしよう")]}, ensure_ascii=False))
    r = export(stack, cid)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith(f'attachment; filename="mysisterdb-{cid}-')
    assert r.headers["content-disposition"].endswith('.json"')
    original = r.json()
    assert original["format"] == "mysisterdb.conversation"
    assert [len(t["replies"]) for t in original["turns"]] == [1, 3]
    assert original["turns"][1]["chosen"] == 1

    new_id = f"{cid}-copy"
    r = import_file(stack, r.content, conversation_id=new_id)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/api/conversations/{new_id}"
    assert r.json() == {"conversation_id": new_id, "turns": 2, "source": "mysisterdb"}
    again = export(stack, new_id).json()
    assert comparable(again) == comparable(original)
    assert turns(stack, new_id)[1]["reply"]["text"] == stored["text"]

    md = export(stack, cid, "markdown")
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.headers["content-disposition"].endswith('.md"')
    assert "**あなた**" in md.text and stored["text"] in md.text and "タマにしよう" not in md.text

    r = import_file(stack, export(stack, cid).content, conversation_id=new_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def tavern_file(fact_turn: int = 1) -> bytes:
    lines: list[dict[str, Any]] = [{"user_name": "お兄ちゃん", "character_name": "しぃ",
                                    "create_date": "2024-7-12@01h31m37s", "chat_metadata": {}},
                                   {"name": "しぃ", "is_user": False, "mes": "おかえり！",
                                    "send_date": "July 12, 2024 1:31am"}]
    for i, text in enumerate(FILLER):
        user = FACT if i == fact_turn else text
        lines.append({"name": "お兄ちゃん", "is_user": True, "mes": user,
                      "send_date": "July 12, 2024 1:32am"})
        lines.append({"name": "しぃ", "is_user": False, "mes": f"うん、{text[:4]}ね",
                      "send_date": "July 12, 2024 1:33am", "swipes": [f"うん、{text[:4]}ね", "へえ"],
                      "swipe_id": 0})
    return "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode()


def test_a_sillytavern_chat_is_remembered(stack: Stack, conversation_id: str) -> None:
    cid = conversation_id
    r = import_file(stack, tavern_file(), conversation_id=cid)
    assert r.status_code == 201, r.text
    assert r.json() == {"conversation_id": cid, "turns": len(FILLER) + 1, "source": "sillytavern"}
    history = turns(stack, cid)
    assert history[0]["reply"]["text"] == "おかえり！"
    assert history[2]["user"]["text"] == FACT
    assert [t["state"] for t in history] == ["completed"] * (len(FILLER) + 1)
    # Long past the recent window: only the index can bring it back.
    job = stack.wait_job(stack.submit(f"{QUESTION} {cid}", conversation_id=cid)["id"])
    assert job["status"] == "completed" and job["turn"] == len(FILLER) + 2
    body = stack.sim_requests_asking(f"{QUESTION} {cid}")[-1]
    system = prompt_texts(body)[0]
    assert RECALL_HEADER in system and FACT in system.split(RECALL_HEADER)[1]


def test_branch_has_its_own_history_and_leaves_the_original(stack: Stack,
                                                            conversation_id: str) -> None:
    cid = conversation_id
    chat(stack, cid, "一つ目", "二つ目", "三つ目")
    before = turns(stack, cid)
    r = httpx.post(f"{stack.api_url}/api/conversations/{cid}/branch", json={"turn": 2},
                   timeout=30)
    assert r.status_code == 201, r.text
    branch = r.json()["conversation_id"]
    assert r.headers["location"] == f"/api/conversations/{branch}"
    assert branch != cid and r.json()["turns"] == 2
    assert [(t["user"]["text"], t["reply"]["text"]) for t in turns(stack, branch)] == [
        (t["user"]["text"], t["reply"]["text"]) for t in before[:2]]
    chat(stack, branch, "枝の三つ目")
    assert [t["user"]["text"] for t in turns(stack, branch)] == ["一つ目", "二つ目", "枝の三つ目"]
    assert turns(stack, cid) == before
    listed = httpx.get(f"{stack.api_url}/api/conversations", timeout=5).json()["conversations"]
    assert branch in {c["id"] for c in listed}

    for body, status in [({"turn": 4}, 422), ({"turn": 0}, 422),
                         ({"turn": 1, "conversation_id": cid}, 409),
                         ({"turn": 1, "conversation_id": "bad id"}, 422)]:
        r = httpx.post(f"{stack.api_url}/api/conversations/{cid}/branch", json=body, timeout=10)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]


def test_another_persons_conversation_is_not_found(stack: Stack, stack_redis: redis.Redis,
                                                   conversation_id: str) -> None:
    cid = conversation_id
    chat(stack, cid, "秘密の話")
    stack_redis.set(keys.conv_owner(cid), "bob")
    for r in [export(stack, cid), export(stack, "never-was"),
              httpx.post(f"{stack.api_url}/api/conversations/{cid}/branch", json={"turn": 1},
                         timeout=5)]:
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"


def test_a_file_too_large_is_413_and_stores_nothing(stack: Stack, stack_redis: redis.Redis,
                                                    conversation_id: str) -> None:
    limit = 20 * 1024 * 1024
    r = import_file(stack, b" " * (limit + 1), conversation_id=conversation_id)
    assert r.status_code == 413, r.text
    # Refused by the input bound before the route reads anything (api/limits.py).
    assert r.json()["error"]["code"] == "payload_too_large"
    assert "大きすぎます" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield tavern_file()
        for _ in range(21):
            yield b" " * (1024 * 1024)

    r = import_file(stack, chunks(), conversation_id=conversation_id)
    assert r.status_code == 413, r.text
    assert nothing_stored(stack_redis, conversation_id)


def test_a_malformed_file_is_422_naming_the_line_and_stores_nothing(
        stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> None:
    lines = tavern_file().decode().split("\n")
    lines[5] = '{"name": "しぃ", "is_user": false, "mes": 3}'
    r = import_file(stack, "\n".join(lines).encode(), conversation_id=conversation_id)
    assert r.status_code == 422, r.text
    assert "6 行目" in r.json()["error"]["message"]
    r = import_file(stack, b'{"format": "mysisterdb.conversation", "version": 1, "turns": '
                           b'[{"user": {"text": "x"}}]}', conversation_id=conversation_id)
    assert r.status_code == 422 and "turns[0].user.created_at" in r.json()["error"]["message"]
    assert nothing_stored(stack_redis, conversation_id)


def test_an_imported_conversation_can_be_deleted(stack: Stack, stack_redis: redis.Redis,
                                                 conversation_id: str) -> None:
    assert import_file(stack, tavern_file(), conversation_id=conversation_id).status_code == 201
    r = httpx.delete(f"{stack.api_url}/api/conversations/{conversation_id}", timeout=10)
    assert r.status_code == 204, r.text
    assert nothing_stored(stack_redis, conversation_id)
