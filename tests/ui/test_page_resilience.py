"""Never stuck: a failed request is retried with backoff while the page says it is reconnecting;
a reload at any moment shows the conversation as it stands; a busy (429) or unavailable (503)
server is explained; a bad conversation id is a notice, never a message from しぃ."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from playwright.sync_api import Route, expect

from mysisterdb.redis_server import RedisServer
from mysisterdb.simulator import reply_chunks
from tests.procs import Stack
from tests.ui.conftest import ChatPage, history, release

FIRST_CHUNK = reply_chunks("")[0]
OpenPage = Callable[..., ChatPage]


def full_reply(message: str) -> str:
    return "".join(reply_chunks(message))


def test_failed_polls_are_retried_with_backoff_and_the_reply_still_arrives(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.allowed_console.append("net::ERR_FAILED")  # Chromium logs the aborted requests
    failed: list[str] = []

    def blip(route: Route) -> None:
        if len(failed) < 3:  # the network drops the first three reads of the job
            failed.append(route.request.url)
            route.abort("failed")
        else:
            route.continue_()

    chat.page.route("**/api/jobs/*", blip)
    message = "ネットが切れても #sim:sleep=1"
    chat.send(message)
    expect(chat.page.locator("#connection")).to_contain_text("サーバーに接続できません。")
    expect(chat.page.locator("#connection")).to_contain_text("秒後に再接続します")
    chat.shot("reconnecting")
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply(message))
    expect(chat.page.locator("#connection")).to_be_hidden()
    assert len(failed) == 3
    chat.shot("recovered")


def test_a_reload_mid_reply_shows_the_text_so_far_and_keeps_streaming(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    name = f"reload-{conversation_id}"
    message = f"リロードしても続く？ #sim:hold={name}"
    chat.send(message)
    expect(chat.turn(0).locator(".reply")).to_have_text(FIRST_CHUNK)
    chat.page.reload()
    turn = chat.turn(0)
    expect(turn.locator(".user-text")).to_have_text(message)
    expect(turn.locator(".reply")).to_have_text(FIRST_CHUNK)
    expect(turn.locator(".status-text")).to_contain_text("生成中")
    chat.shot("reloaded-mid-reply")
    release(ui_stack, name)
    expect(turn.locator(".reply")).to_have_text(full_reply(message))
    expect(turn.locator(".status")).to_be_hidden()
    chat.shot("finished-after-reload")


def test_a_reload_after_a_failure_still_shows_the_error_with_retry(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    message = f"失敗しても残る？ #sim:error=500 {conversation_id}"
    chat.send(message)
    expect(chat.turn(0).locator(".problem")).to_contain_text("返事を作れませんでした。")
    chat.page.reload()
    turn = chat.turn(0)
    expect(turn.locator(".user-text")).to_have_text(message)
    expect(turn.locator(".problem")).to_contain_text("返事を作れませんでした。")
    expect(turn.locator(".problem")).to_contain_text("もう一度試してください")
    expect(turn.get_by_role("button", name="もう一度試す")).to_be_visible()
    expect(turn.locator(".msg.assistant")).to_be_hidden()
    chat.shot("failure-after-reload")


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stops answering (SIGSTOP) until the block ends: the API answers 503."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_message_sent_while_the_server_is_unavailable_goes_through_once_it_is_back(
        open_page: OpenPage, ui_stack: Stack, ui_redis: RedisServer, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.allowed_console.append("status of 503")
    message = "いま届く？"
    with frozen(ui_redis):
        chat.send(message)
        connection = chat.page.locator("#connection")
        expect(connection).to_contain_text("サーバーが一時的に利用できません", timeout=20000)
        expect(chat.turn(0).locator(".status-text")).to_have_text("送信中…")
        chat.shot("server-unavailable")
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply(message), timeout=30000)
    expect(chat.page.locator("#connection")).to_be_hidden()
    # Sent again and again with one Idempotency-Key: stored once.
    turns = history(ui_stack, conversation_id)["turns"]
    assert [t["user"]["text"] for t in turns] == [message]


def test_a_message_still_on_its_way_survives_a_reload_and_is_stored_once(
        open_page: OpenPage, ui_stack: Stack, ui_redis: RedisServer, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.allowed_console.append("status of 503")
    message = "リロードしても届く？"
    with frozen(ui_redis):
        chat.send(message)
        expect(chat.page.locator("#connection")).to_contain_text(
            "サーバーが一時的に利用できません", timeout=20000)
        chat.page.reload()  # the page itself needs no Redis; its history waits for it
        expect(chat.page.locator("#connection")).to_contain_text(
            "サーバーが一時的に利用できません", timeout=20000)
    expect(chat.turn(0).locator(".user-text")).to_have_text(message, timeout=30000)
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply(message))
    turns = history(ui_stack, conversation_id)["turns"]
    assert [t["user"]["text"] for t in turns] == [message]
    chat.page.reload()  # nothing is sent again
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply(message))
    expect(chat.turns()).to_have_count(1)
    assert len(history(ui_stack, conversation_id)["turns"]) == 1


def cancel(stack: Stack, job_id: str) -> None:
    httpx.post(f"{stack.api_url}/api/jobs/{job_id}/cancel", timeout=5)  # 409 if already over


def test_a_busy_server_says_when_to_try_again_and_keeps_the_message(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    chat.allowed_console.append("status of 429")
    # A hung reply runs, two prompts wait behind it: the queue limit (2) is reached.
    other = f"{conversation_id}-busy"
    head = ui_stack.submit("先に話すね #sim:hang", conversation_id=other)
    jobs = [head["id"]]
    try:
        ui_stack.wait_job(head["id"], until=lambda j: j["status"] == "in_progress")
        jobs += [ui_stack.submit(f"待ってる{i}", conversation_id=other)["id"] for i in range(2)]
        chat.send("いま送れる？")
        notice = chat.page.locator("#notice")
        expect(notice).to_contain_text("サーバーが混み合っています。")
        expect(notice).to_contain_text("秒ほど待ってからもう一度送ってください。")
        expect(chat.page.locator("#message")).to_have_value("いま送れる？")
        expect(chat.turns()).to_have_count(0)
        chat.shot("busy")
    finally:
        for job_id in reversed(jobs):
            cancel(ui_stack, job_id)
    chat.page.press("#message", "Enter")
    expect(chat.turn(0).locator(".reply")).to_have_text(full_reply("いま送れる？"))
    expect(chat.page.locator("#notice")).to_be_hidden()


def test_a_bad_conversation_id_is_a_clear_notice_never_a_message_from_her(
        open_page: OpenPage) -> None:
    chat = open_page(navigate=False)
    chat.page.goto(f"{chat.stack.api_url}/?conversation_id=bad%20id!")
    notice = chat.page.locator("#notice")
    expect(notice).to_contain_text("この URL の会話 ID「bad id!」は使えません")
    expect(chat.page.locator("#message")).to_be_disabled()
    expect(chat.page.locator(".msg")).to_have_count(0)
    chat.shot("bad-id")
    notice.get_by_role("link", name="新しい会話を始める").click()
    expect(chat.page.locator("#message")).to_be_enabled()
    expect(notice).to_be_hidden()
    assert "conversation_id=c-" in chat.page.url
