"""Branch, export and import on the chat page in a real browser: ここから分岐 under an older
turn, the conversation's menu (⋯) saving the JSON and Markdown files and importing one back,
a malformed file refused with the server's words, and the menu on a 375 px phone by keyboard."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.sync_api import expect

from mysisterdb.simulator import reply_chunks
from tests.procs import Stack
from tests.ui.conftest import PHONE, ChatPage, history

OpenPage = Callable[..., ChatPage]
MESSAGES = ("週末は海に行ったよ", "次は山に行きたいな")


def full_reply(message: str) -> str:
    return "".join(reply_chunks(message))


def two_turns(stack: Stack, conversation_id: str) -> None:
    for text in MESSAGES:  # in turn order: each waits for the one before
        stack.wait_job(stack.submit(text, conversation_id=conversation_id)["id"])


def conversation_ids(stack: Stack) -> set[str]:
    ids: set[str] = set()
    params = {"limit": "100"}
    while True:
        response = httpx.get(f"{stack.api_url}/api/conversations", params=params, timeout=5)
        response.raise_for_status()
        listed = response.json()
        ids |= {c["id"] for c in listed["conversations"]}
        if not listed["next_before"]:
            return ids
        params["before"] = listed["next_before"]


def open_in_url(chat: ChatPage, other_than: str) -> str:
    expect(chat.page).not_to_have_url(re.compile(re.escape(other_than)))
    [opened] = parse_qs(urlsplit(chat.page.url).query)["conversation_id"]
    return opened


def texts(turns: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(t["user"]["text"], t["reply"]["text"]) for t in turns]  # type: ignore[index]


def test_branch_from_an_older_turn_opens_a_conversation_with_the_turns_up_to_it(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    two_turns(ui_stack, conversation_id)
    chat = open_page(conversation_id=conversation_id)
    expect(chat.turns()).to_have_count(2)
    first = chat.turn(0)
    # Offered on every finished turn, not only the newest.
    for i in (0, 1):
        expect(chat.turn(i).get_by_role("button", name=f"ここから分岐：{i + 1} 番目まで")).to_be_visible()
    chat.shot("two-turns")
    first.get_by_role("button", name="ここから分岐：1 番目まで").click()

    branch = open_in_url(chat, conversation_id)
    expect(chat.turns()).to_have_count(1)
    expect(chat.turn(0).locator(".user-text")).to_have_text(MESSAGES[0])
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply(MESSAGES[0]))
    expect(chat.page.locator("#announcer")).to_have_text(re.compile("1 番目までを新しい会話に分岐しました"))
    # The list shows it (and marks it open); the original keeps both turns.
    expect(chat.page.locator(f"#conversations a[data-id='{branch}']")).to_have_attribute(
        "aria-current", "page")
    assert len(history(ui_stack, branch)["turns"]) == 1
    assert texts(history(ui_stack, conversation_id)["turns"]) == [
        (m, full_reply(m)) for m in MESSAGES]
    chat.shot("branched")


def test_export_then_import_gives_the_same_turns(open_page: OpenPage, ui_stack: Stack,
                                                 conversation_id: str, tmp_path: Path) -> None:
    two_turns(ui_stack, conversation_id)
    chat = open_page(conversation_id=conversation_id)
    expect(chat.turns()).to_have_count(2)
    page = chat.page
    page.get_by_role("button", name="会話のメニュー").click()
    chat.shot("menu")
    with page.expect_download() as saving:
        page.get_by_role("link", name="この会話をエクスポート (JSON)").click()
    saved = tmp_path / saving.value.suggested_filename
    saving.value.save_as(saved)
    assert saved.suffix == ".json"
    exported = json.loads(saved.read_text(encoding="utf-8"))
    assert exported["conversation_id"] == conversation_id
    assert [(t["user"]["text"], t["replies"][t["chosen"]]["text"]) for t in exported["turns"]] == [
        (m, full_reply(m)) for m in MESSAGES]

    page.get_by_role("button", name="会話のメニュー").click()
    with page.expect_download() as saving:
        page.get_by_role("link", name="この会話を Markdown で保存").click()
    markdown = Path(saving.value.path()).read_text(encoding="utf-8")
    assert saving.value.suggested_filename.endswith(".md")
    assert MESSAGES[1] in markdown and full_reply(MESSAGES[1]) in markdown

    before = conversation_ids(ui_stack)
    page.get_by_role("button", name="会話のメニュー").click()
    with page.expect_file_chooser() as choosing:
        page.get_by_role("button", name="会話ファイルをインポート").click()
    choosing.value.set_files(saved)
    imported = open_in_url(chat, conversation_id)
    expect(chat.turns()).to_have_count(2)
    for i, message in enumerate(MESSAGES):
        expect(chat.turn(i).locator(".user-text")).to_have_text(message)
        expect(chat.turn(i).locator(".reply")).to_have_text(full_reply(message))
    expect(page.locator(f"#conversations a[data-id='{imported}']")).to_be_visible()
    expect(page.locator("#announcer")).to_have_text(re.compile("2 件のやりとりを読み込みました"))
    assert conversation_ids(ui_stack) - before == {imported}
    assert texts(history(ui_stack, imported)["turns"]) == texts(
        history(ui_stack, conversation_id)["turns"])
    chat.shot("imported")


def test_a_malformed_file_shows_the_servers_reason_and_creates_nothing(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str, tmp_path: Path) -> None:
    two_turns(ui_stack, conversation_id)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "mysisterdb.conversation", "version": 1, "turns": [{"turn": 1}]}',
                      encoding="utf-8")
    # What the server says of it (a 422 stores nothing, so asking costs nothing).
    refused = httpx.post(f"{ui_stack.api_url}/api/conversations/import",
                         content=broken.read_bytes(), timeout=10)
    assert refused.status_code == 422
    reason = refused.json()["error"]["message"]
    chat = open_page(conversation_id=conversation_id)
    chat.allowed_console.append("422")  # Chromium logs the refused request itself
    before = conversation_ids(ui_stack)
    listed = chat.page.locator("#conversations a").count()
    chat.page.get_by_role("button", name="会話のメニュー").click()
    with chat.page.expect_file_chooser() as choosing:
        chat.page.get_by_role("button", name="会話ファイルをインポート").click()
    choosing.value.set_files(broken)
    expect(chat.page.locator("#notice-text")).to_have_text(f"インポートできませんでした：{reason}")
    expect(chat.page.locator("#transfer-status")).to_be_hidden()
    assert conversation_ids(ui_stack) == before
    expect(chat.page.locator("#conversations a")).to_have_count(listed)
    assert urlsplit(chat.page.url).query == f"conversation_id={conversation_id}"
    expect(chat.turns()).to_have_count(2)
    chat.shot("refused")


def test_the_menu_and_branch_fit_a_phone_and_work_by_keyboard(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    two_turns(ui_stack, conversation_id)
    chat = open_page(viewport=PHONE, conversation_id=conversation_id)
    page = chat.page
    expect(chat.turns()).to_have_count(2)
    toggle = page.get_by_role("button", name="会話のメニュー")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    items = [page.get_by_role("link", name="この会話をエクスポート (JSON)"),
             page.get_by_role("link", name="この会話を Markdown で保存"),
             page.get_by_role("button", name="会話ファイルをインポート")]
    expect(items[0]).to_be_focused()
    branch = chat.turn(0).get_by_role("button", name="ここから分岐：1 番目まで")
    for control in [toggle, *items, branch]:
        expect(control).to_be_visible()
        box = control.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
        assert box["height"] >= 36, box
    chat.shot("phone-menu")
    page.keyboard.press("Escape")
    expect(items[0]).to_be_hidden()
    expect(toggle).to_be_focused()
    expect(toggle).to_have_attribute("aria-expanded", "false")
