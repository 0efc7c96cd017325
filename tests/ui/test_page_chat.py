"""Everyday scenes in a real browser: a reply shows its step and streams in, stop, retry in
place, a hung Gemini, and the message box (Enter, Shift+Enter, IME, length, sending)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from playwright.sync_api import Request, Route, expect

from mysisterdb.simulator import reply_chunks
from tests.procs import Stack, wait_for
from tests.ui.conftest import (
    ChatPage,
    history,
    hold_state,
    release,
    start_simulator,
    stop_simulator,
)

FIRST_CHUNK = reply_chunks("")[0]
OpenPage = Callable[..., ChatPage]


def full_reply(message: str) -> str:
    return "".join(reply_chunks(message))


def posted_messages(chat: ChatPage) -> list[str]:
    """Messages the page POSTs to /api/chat, in order (collected from now on)."""
    sent: list[str] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/api/chat"):
            sent.append(json.loads(request.post_data or "{}")["message"])

    chat.page.on("request", seen)
    return sent


def test_a_reply_shows_its_step_in_japanese_with_the_elapsed_time(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    message = "ゆっくりでいいよ #sim:sleep=2.5"
    chat.send(message)
    turn = chat.turn(0)
    expect(turn.locator(".msg.user")).to_have_text("あなた：" + message)
    # Gemini is still thinking: the step, in Japanese, and seconds counting up.
    expect(turn.locator(".status-text")).to_have_text(re.compile(r"^生成中・[1-9]\d* 秒$"))
    expect(turn.get_by_role("button", name="返事の生成を停止")).to_be_visible()
    chat.shot("generating")
    expect(turn.locator(".reply")).to_have_text(full_reply(message))
    expect(turn.locator(".status")).to_be_hidden()
    chat.shot("answered")


def job_reads(chat: ChatPage) -> list[str]:
    """The query of every read of a job the page makes, in order (collected from now on)."""
    reads: list[str] = []
    chat.page.on("request", lambda r: "/api/jobs/" in r.url and r.method == "GET"
                 and reads.append(urlsplit(r.url).query))
    return reads


def test_the_reply_streams_in_while_gemini_is_still_writing_it(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    reads = job_reads(chat)
    name = f"hold-{conversation_id}"
    message = f"ゆっくり話して #sim:hold={name}"
    chat.send(message)
    reply = chat.turn(0).locator(".reply")
    expect(reply).to_have_text(FIRST_CHUNK)
    expect(reply).to_have_class(re.compile(r"\bstreaming\b"))
    expect(chat.turn(0).locator(".status-text")).to_contain_text("生成中")
    assert hold_state(ui_stack, name) == "held"  # the text came while the stream was open
    chat.shot("streaming")
    release(ui_stack, name)
    expect(reply).to_have_text(full_reply(message))
    expect(reply).not_to_have_class(re.compile(r"\bstreaming\b"))
    # Screen readers hear the whole reply once it is there.
    expect(chat.page.locator("#announcer")).to_have_text("しぃ：" + full_reply(message))
    chat.shot("streamed")
    # Followed by long-polls, each from the sequence the page had: no fixed-interval polling.
    assert reads and all(re.fullmatch(r"wait=\d+&after=\d+", q) for q in reads), reads
    afters = [int(q.rsplit("=", 1)[1]) for q in reads]
    assert afters == sorted(set(afters)), afters


def test_stop_ends_the_reply_on_the_server_keeps_its_text_and_retry_finishes_it(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    name = f"stop-{conversation_id}"
    message = f"とちゅうで止めるね #sim:hold={name}"
    chat.send(message)
    turn = chat.turn(0)
    expect(turn.locator(".reply")).to_have_text(FIRST_CHUNK)
    stopped_job = turn.get_attribute("data-job-id")
    turn.get_by_role("button", name="返事の生成を停止").click()
    expect(turn.locator(".problem-text")).to_have_text("停止しました。")
    expect(turn.locator(".reply")).to_have_text(FIRST_CHUNK)  # the text so far stays
    expect(turn.locator(".status")).to_be_hidden()
    chat.shot("stopped")
    assert stopped_job
    job = ui_stack.job(stopped_job)
    assert (job["status"], job["partial_reply"]) == ("cancelled", FIRST_CHUNK)
    assert {s["name"]: s["status"] for s in job["steps"]}["generate"] == "cancelled"
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["state"], stored["reply"], stored["retryable"]) == ("cancelled", None, True)

    # Retry: the same message again, in the same place, without retyping.
    turn.get_by_role("button", name="もう一度試す").click()
    expect(turn).not_to_have_attribute("data-job-id", stopped_job)
    expect(turn.locator(".problem")).to_be_hidden()
    expect(turn.locator(".reply")).to_have_text(FIRST_CHUNK)
    release(ui_stack, name)
    expect(turn.locator(".reply")).to_have_text(full_reply(message))
    expect(chat.turns()).to_have_count(1)
    # The whole text shows as soon as it is streamed; the job completes at its save step
    # just after (CI read the history in between once).
    expect(turn.locator(".status")).to_be_hidden()
    wait_for(lambda: history(ui_stack, conversation_id)["turns"][0]["state"] == "completed",
             timeout_s=10, what="the retried turn stored completed")
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["state"], stored["user"]["text"]) == ("completed", message)
    chat.shot("retried")


def test_a_failed_reply_says_why_in_japanese_and_retry_sends_the_same_message_in_place(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    marker = f"#sim:error=500 {conversation_id}"
    chat.send(f"だめかな {marker}")
    turn = chat.turn(0)
    problem = turn.locator(".problem")
    expect(problem).to_contain_text("返事を作れませんでした。")
    expect(problem).to_contain_text("もう一度試してください")
    expect(turn.locator(".msg.assistant")).to_be_hidden()  # never in the character's voice
    chat.shot("failed")
    first_job = turn.get_attribute("data-job-id")
    asked = len(ui_stack.sim_requests_asking(marker))
    problem.get_by_role("button", name="もう一度試す").click()
    expect(turn).not_to_have_attribute("data-job-id", first_job or "")
    # The retried job's own ending: the words of the first failure must not stand in for it.
    expect(turn).to_have_attribute("data-state", "failed")
    expect(problem).to_be_visible()
    expect(problem).to_contain_text("返事を作れませんでした。")
    # The stored message went to Gemini again (and failed again: it carries the directive).
    assert len(ui_stack.sim_requests_asking(marker)) > asked
    expect(chat.turns()).to_have_count(1)
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert stored["state"] == "failed" and stored["job"]["id"] == turn.get_attribute("data-job-id")


def test_retry_succeeds_in_place_once_gemini_answers_again(
        open_page: OpenPage, ui_stack: Stack, ui_logs: object, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    message = "つながってる？"
    stop_simulator(ui_stack)  # Gemini unreachable: the reply fails however often it is tried
    try:
        chat.send(message)
        expect(chat.turn(0).locator(".problem")).to_contain_text("返事を作れませんでした。")
    finally:
        start_simulator(ui_stack, log_dir=ui_logs)  # type: ignore[arg-type]
    turn = chat.turn(0)
    chat.shot("failed-while-gemini-was-down")
    turn.get_by_role("button", name="もう一度試す").click()
    expect(turn.locator(".reply")).to_have_text(full_reply(message))
    expect(turn.locator(".problem")).to_be_hidden()
    expect(chat.turns()).to_have_count(1)
    [stored] = history(ui_stack, conversation_id)["turns"]
    assert (stored["state"], stored["reply"]["text"]) == ("completed", full_reply(message))
    chat.shot("retried")


def test_a_hung_gemini_ends_with_the_timeout_message_and_the_next_message_works(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.send("返事できる？ #sim:hang")
    problem = chat.turn(0).locator(".problem")
    expect(problem).to_contain_text("タイムアウトしました", timeout=30000)
    expect(problem.get_by_role("button", name="もう一度試す")).to_be_visible()
    chat.shot("timed-out")
    chat.send("こんどは大丈夫？")
    expect(chat.turn(1).locator(".reply")).to_have_text(full_reply("こんどは大丈夫？"))
    chat.shot("next-message")


def test_enter_sends_shift_enter_breaks_the_line_and_an_ime_enter_never_sends(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    sent = posted_messages(chat)
    box, keyboard = chat.page.locator("#message"), chat.page.keyboard
    box.focus()
    keyboard.type("一行目")
    keyboard.press("Shift+Enter")
    keyboard.type("二行目")
    expect(box).to_have_value("一行目\n二行目")
    keyboard.press("Enter")
    expect(chat.turn(0).locator(".user-text")).to_have_text("一行目\n二行目")
    expect(box).to_have_value("")

    # A Japanese IME is composing: the Enter that confirms the conversion must not send.
    cdp = chat.page.context.new_cdp_session(chat.page)
    cdp.send("Input.imeSetComposition", {"text": "にほんご", "selectionStart": 4, "selectionEnd": 4})
    keyboard.press("Enter")
    cdp.send("Input.insertText", {"text": "日本語"})  # the conversion is confirmed
    chat.shot("ime-confirmed")
    keyboard.press("Enter")  # now Enter sends
    expect(chat.turn(1).locator(".user-text")).to_have_text("日本語")
    expect(chat.turn(1).locator(".reply")).to_have_text(full_reply("日本語"))
    assert sent == ["一行目\n二行目", "日本語"]


def test_a_message_over_the_limit_is_refused_with_the_reason_and_never_cut(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    sent = posted_messages(chat)
    box, counter = chat.page.locator("#message"), chat.page.locator("#counter")
    box.fill("あ" * 100)
    expect(counter).to_have_text("")
    box.fill("あ" * 7000)
    expect(counter).to_have_text("7,000 / 8,000 文字")
    box.fill("あ" * 9000)  # a 9,000-character paste
    expect(counter).to_have_text("9,000 / 8,000 文字（1,000 文字オーバー）")
    expect(box).to_have_attribute("aria-invalid", "true")
    box.press("Enter")
    expect(chat.page.locator("#notice")).to_contain_text(
        "メッセージが長すぎます（9,000 文字、送れるのは 8,000 文字まで）")
    assert len(box.input_value()) == 9000  # nothing cut
    chat.shot("too-long")
    assert sent == [] and chat.turns().count() == 0


def test_a_message_the_server_refuses_comes_back_to_the_box_with_the_reason(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.allowed_console.append("status of 422")
    text = "東京 " * 2500  # under the character limit, over the context's token budget
    chat.send(text)
    expect(chat.page.locator("#notice")).to_contain_text("送信できませんでした：メッセージが長すぎます")
    expect(chat.page.locator("#message")).to_have_value(text.strip())
    expect(chat.turns()).to_have_count(0)
    chat.shot("refused")


def test_the_send_button_is_disabled_while_a_message_is_being_sent(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    held: list[Route] = []
    chat.page.route("**/api/chat", lambda route: held.append(route))  # held until let go
    chat.send("ちょっと待ってね")
    button = chat.page.get_by_role("button", name="送信", exact=True)
    expect(button).to_be_disabled()
    expect(chat.turn(0).locator(".status-text")).to_have_text("送信中…")
    chat.page.fill("#message", "二通目")
    chat.page.press("#message", "Enter")  # ignored while the first is on its way
    chat.shot("sending")
    assert len(held) == 1
    held[0].continue_()
    expect(button).to_be_enabled()
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply("ちょっと待ってね"))
    expect(chat.page.locator("#message")).to_have_value("二通目")
    expect(chat.turns()).to_have_count(1)
