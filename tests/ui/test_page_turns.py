"""The newest turn's actions in a real browser: もう一度 and ← k/n →, 続ける on a reply cut
short, 編集 (and ↑ in an empty box), on a desktop and on a 375 px phone."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Route, expect

from core.turns import CONTINUE_PROMPT
from mysisterdb.simulator import reply_chunks
from tests.procs import Stack
from tests.ui.conftest import PHONE, ChatPage, history, hold_state, release

OpenPage = Callable[..., ChatPage]
# A regenerate's reply opens with a mark of its own seed (the simulator's variant).
VARIANT_OPENER = re.compile(r"^\S+（#\d+）\s*$")  # only the first chunk (markdown ends in \n)


def full_reply(message: str) -> str:
    return "".join(reply_chunks(message))


def answered(chat: ChatPage, message: str) -> None:
    chat.send(message)
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply(message))


def test_regenerate_then_back_to_the_first_reply(open_page: OpenPage, ui_stack: Stack,
                                                  conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    message = "今日はなにしてた？"
    answered(chat, message)
    turn = chat.turn(0)
    first = full_reply(message)
    turn.get_by_role("button", name="別の返事を作る").click()
    expect(turn.locator(".reply-count")).to_have_text("2/2")
    expect(turn.locator(".reply")).not_to_have_text(first)
    second = turn.locator(".reply").inner_text()
    chat.shot("regenerated")

    turn.get_by_role("button", name="前の返事").click()
    expect(turn.locator(".reply-count")).to_have_text("1/2")
    expect(turn.locator(".reply")).to_have_text(first)
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["replies"], stored["chosen"], stored["reply"]["text"]) == (2, 0, first)
    expect(turn.get_by_role("button", name="前の返事")).to_be_disabled()

    # → from the first goes to the second; → on the last makes a third (as SillyTavern does).
    turn.get_by_role("button", name="次の返事", exact=True).click()
    expect(turn.locator(".reply-count")).to_have_text("2/2")
    expect(turn.locator(".reply")).to_have_text(second)
    chat.page.locator("#message").focus()
    chat.page.keyboard.press("ArrowRight")  # the empty box's → is the same button
    expect(turn.locator(".reply-count")).to_have_text("3/3")
    assert len(history(ui_stack, conversation_id)["turns"]) == 1
    chat.shot("third")


def test_a_reload_mid_regenerate_shows_the_new_reply_growing_then_finished(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    name = f"regen-{conversation_id}"
    message = f"もう一回言ってみて #sim:hold={name}"  # every reply of the turn is held
    chat.send(message)
    turn = chat.turn(0)
    expect(turn.locator(".reply")).to_have_text(reply_chunks(message)[0])
    release(ui_stack, name)
    first = full_reply(message)
    expect(turn.locator(".reply")).to_have_text(first)
    turn.get_by_role("button", name="別の返事を作る").click()
    expect(turn.locator(".reply")).to_have_text(VARIANT_OPENER)  # its first chunk, held
    growing = turn.locator(".reply").inner_text().strip()

    # After the reload the page has only the history's picture of the turn: the job's own
    # answers wait until that picture has been checked.
    waiting: list[Route] = []

    def wait(route: Route) -> None:
        waiting.append(route)

    chat.page.route("**/api/jobs/*", wait)
    chat.page.reload()
    turn = chat.turn(0)
    # The regenerate's own text so far, still running: not the reply it will replace.
    expect(turn.locator(".reply")).to_have_text(growing)
    expect(turn).to_have_attribute("data-state", "in_progress")
    expect(turn.get_by_role("button", name="返事の生成を停止")).to_be_visible()
    expect(turn.locator(".reply-count")).to_be_hidden()
    assert hold_state(ui_stack, name) == "held"  # all of that was seen mid-stream
    chat.shot("reloaded-mid-regenerate")
    for route in waiting:
        route.continue_()
    chat.page.unroute("**/api/jobs/*")  # lets through any that came meanwhile
    release(ui_stack, name)
    second = growing + "".join(reply_chunks(message)[1:])
    expect(turn.locator(".reply")).to_have_text(second)
    expect(turn.locator(".status")).to_be_hidden()
    expect(turn.locator(".reply-count")).to_have_text("2/2")
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["replies"], stored["chosen"], stored["reply"]["text"]) == (2, 1, second)
    chat.shot("regenerated-after-reload")


def test_continue_grows_the_same_reply(open_page: OpenPage, ui_stack: Stack,
                                       conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.send("長い話をして #sim:stall")
    turn = chat.turn(0)
    # The stream stops after one chunk; Gemini's read timeout ends it as incomplete.
    expect(turn.locator(".problem-text")).to_contain_text("返事が途中で止まりました。",
                                                           timeout=30000)
    cut = turn.locator(".reply").inner_text()
    assert cut
    turn.get_by_role("button", name="返事の続きを書かせる").click()
    expect(turn.locator(".problem")).to_be_hidden()
    expect(turn).to_have_attribute("data-state", "completed", timeout=30000)
    grown = turn.locator(".reply").inner_text()
    # The text so far, then what the model added when asked to go on (the simulator's reply
    # to the continue prompt; its opener is the cut text's too, so a prefix check is not enough).
    assert grown == cut + full_reply(CONTINUE_PROMPT), (cut, grown)
    # One reply grew: no second reply, no second turn.
    expect(chat.turns()).to_have_count(1)
    expect(turn.locator(".msg.assistant")).to_have_count(1)
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["replies"], stored["reply"]["text"]) == (1, grown)
    chat.shot("continued")


def test_edit_the_newest_message_with_the_arrow_key(open_page: OpenPage, ui_stack: Stack,
                                                    conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    answered(chat, "ぼくの猫の名前はタマ")
    turn = chat.turn(0)
    # Offered once the history says so (refreshed when the reply's job ends).
    expect(turn.get_by_role("button", name="メッセージを編集")).to_be_visible()
    chat.page.locator("#message").focus()
    chat.page.keyboard.press("ArrowUp")  # ↑ in the empty box edits the newest message
    box = turn.get_by_role("textbox", name="編集するメッセージ")
    expect(box).to_be_focused()
    expect(box).to_have_value("ぼくの猫の名前はタマ")
    chat.shot("editing")
    corrected = "ぼくの猫の名前はミケ"
    box.fill(corrected)
    box.press("Enter")
    expect(turn.locator(".msg.user")).to_have_text("あなた：" + corrected)
    expect(turn.locator(".reply")).to_have_text(full_reply(corrected))
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["user"]["text"], stored["reply"]["text"]) == (corrected, full_reply(corrected))
    # Cancel leaves the message as it is.
    turn.get_by_role("button", name="メッセージを編集").click()
    turn.get_by_role("button", name="編集をやめる").click()
    expect(box).to_be_hidden()
    expect(turn.get_by_role("button", name="メッセージを編集")).to_be_focused()


def test_the_buttons_fit_a_phone_and_work_by_keyboard(open_page: OpenPage,
                                                      conversation_id: str) -> None:
    chat = open_page(viewport=PHONE, conversation_id=conversation_id)
    answered(chat, "スマホから話すね")
    turn = chat.turn(0)
    turn.get_by_role("button", name="別の返事を作る").focus()
    chat.page.keyboard.press("Enter")
    expect(turn.locator(".reply-count")).to_have_text("2/2")
    for name in ("前の返事", "次の返事（新しく作る）", "別の返事を作る", "返事の続きを書かせる",
                 "メッセージを編集"):
        button = turn.get_by_role("button", name=name, exact=True)
        expect(button).to_be_visible()
        box = button.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (name, box)
        assert box["height"] >= 36, (name, box)  # the page says at least 36 px
    chat.shot("phone")

