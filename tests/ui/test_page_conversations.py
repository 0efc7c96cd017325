"""Conversations: the side list (newest first, with titles), a link opens one, new chat, reset
and delete with confirmation."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis
from playwright.sync_api import expect

from context.types import Message
from core.history import history_store
from mysisterdb.redis_server import RedisServer
from mysisterdb.simulator import reply_chunks
from tests.procs import Stack
from tests.ui.conftest import ChatPage, history

OpenPage = Callable[..., ChatPage]


def answered(stack: Stack, text: str, conversation_id: str) -> None:
    stack.wait_job(stack.submit(text, conversation_id=conversation_id)["id"])


def test_the_list_shows_conversations_newest_first_and_a_link_opens_one(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    older, newer = f"{conversation_id}-older", f"{conversation_id}-newer"
    answered(ui_stack, "前の会話の最初のメッセージ", older)
    answered(ui_stack, "新しい会話の最初のメッセージ", newer)
    chat = open_page(conversation_id=older)
    links = chat.page.locator("#conversations a")
    expect(links.filter(has_text="新しい会話の最初のメッセージ")).to_be_visible()
    ids = [links.nth(i).get_attribute("data-id") for i in range(links.count())]
    assert ids.index(newer) < ids.index(older)  # newest activity first
    expect(links.filter(has_text="前の会話の最初のメッセージ")).to_have_attribute("aria-current", "page")
    expect(chat.page.locator("#title")).to_have_text("前の会話の最初のメッセージ")
    chat.shot("list")

    links.filter(has_text="新しい会話の最初のメッセージ").click()
    expect(chat.turn(0).locator(".user-text")).to_have_text("新しい会話の最初のメッセージ")
    assert chat.page.url.endswith(f"/?conversation_id={newer}")
    chat.page.go_back()  # the browser's history follows the conversations
    expect(chat.turn(0).locator(".user-text")).to_have_text("前の会話の最初のメッセージ")

    # The URL is a link to the conversation: a new tab opens it as it stands.
    other = open_page(conversation_id=newer)
    expect(other.turn(0).locator(".reply")).to_have_text(
        "".join(reply_chunks("新しい会話の最初のメッセージ")))


def test_new_chat_starts_an_empty_conversation_that_joins_the_list_when_used(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    answered(ui_stack, "今までの話", conversation_id)
    chat = open_page(conversation_id=conversation_id)
    expect(chat.turns()).to_have_count(1)
    chat.page.get_by_role("button", name="＋ 新しい会話").click()
    expect(chat.turns()).to_have_count(0)
    expect(chat.page.locator("#empty")).to_be_visible()
    expect(chat.page.locator("#message")).to_be_focused()
    new_id = chat.page.url.split("conversation_id=")[1]
    assert new_id != conversation_id and new_id.startswith("c-")
    expect(chat.page.locator("#conversations a[aria-current=page]")).to_have_text(
        "新しい会話まだメッセージはありません")
    chat.shot("new-chat")
    chat.send("はじめまして")
    expect(chat.turn(0).locator(".reply")).to_have_text("".join(reply_chunks("はじめまして")))
    expect(chat.page.locator(f"#conversations a[data-id='{new_id}']")).to_contain_text("はじめまして")
    assert history(ui_stack, new_id)["turns"][0]["user"]["text"] == "はじめまして"


def test_delete_asks_first_and_then_removes_the_conversation(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    keep, doomed = f"{conversation_id}-keep", f"{conversation_id}-doomed"
    answered(ui_stack, "残す会話", keep)
    answered(ui_stack, "消す会話", doomed)
    chat = open_page(conversation_id=doomed)
    dialog = chat.page.locator("#confirm")
    chat.page.get_by_role("button", name="削除").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("この会話を削除しますか？")
    chat.shot("confirm-delete")
    dialog.get_by_role("button", name="キャンセル").click()
    expect(dialog).to_be_hidden()
    assert len(history(ui_stack, doomed)["turns"]) == 1  # nothing happened

    chat.page.get_by_role("button", name="削除").click()
    dialog.get_by_role("button", name="削除する").click()
    expect(chat.page.locator(f"#conversations a[data-id='{doomed}']")).to_have_count(0)
    expect(chat.page.locator("#announcer")).to_have_text("会話を削除しました。")
    assert f"conversation_id={doomed}" not in chat.page.url
    gone = httpx.get(f"{ui_stack.api_url}/api/conversations/{doomed}/messages", timeout=5)
    assert gone.status_code == 200 and gone.json()["turns"] == []
    expect(chat.page.locator(f"#conversations a[data-id='{keep}']")).to_be_visible()
    chat.shot("deleted")


def test_reset_asks_first_and_then_empties_the_conversation(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    answered(ui_stack, "忘れてほしい話", conversation_id)
    chat = open_page(conversation_id=conversation_id)
    expect(chat.turns()).to_have_count(1)
    chat.page.get_by_role("button", name="リセット").click()
    dialog = chat.page.locator("#confirm")
    expect(dialog).to_contain_text("この会話をリセットしますか？")
    chat.page.keyboard.press("Escape")  # Escape is a "no"
    expect(dialog).to_be_hidden()
    expect(chat.turns()).to_have_count(1)
    chat.page.get_by_role("button", name="リセット").click()
    dialog.get_by_role("button", name="リセットする").click()
    expect(chat.turns()).to_have_count(0)
    expect(chat.page.locator("#announcer")).to_have_text("会話をリセットしました。")
    assert chat.page.url.endswith(f"/?conversation_id={conversation_id}")
    assert history(ui_stack, conversation_id)["turns"] == []
    chat.shot("reset")


def test_a_long_conversation_opens_at_its_end_and_loads_older_turns_on_request(
        open_page: OpenPage, ui_redis: RedisServer, conversation_id: str) -> None:
    # 60 answered turns, stored as the worker stores them (the page shows 50 at a time).
    at = "2026-01-01T00:00:00.000Z"
    messages = [Message(seq=seq, role="user" if seq % 2 else "assistant", tokens=3, created_at=at,
                        text=f"{'質問' if seq % 2 else '答え'}{(seq + 1) // 2}")
                for seq in range(1, 121)]
    client = redis.Redis.from_url(ui_redis.url, socket_timeout=5)
    history_store(client).append_many(conversation_id, messages)
    client.close()
    chat = open_page(conversation_id=conversation_id)
    expect(chat.turns()).to_have_count(50)
    expect(chat.turn(0).locator(".user-text")).to_have_text("質問11")
    expect(chat.turns().last.locator(".reply")).to_have_text("答え60")
    expect(chat.turns().last).to_be_in_viewport()  # opened at the end
    chat.page.locator("#log").evaluate("(log) => { log.scrollTop = 0; }")
    older = chat.page.get_by_role("button", name="以前のメッセージを読み込む")
    older.click()
    expect(chat.turns()).to_have_count(60)
    expect(chat.turn(0).locator(".user-text")).to_have_text("質問1")
    expect(older).to_be_hidden()
    expect(chat.turn(10)).to_be_in_viewport()  # still reading where the older ones joined
    chat.shot("older-loaded")
