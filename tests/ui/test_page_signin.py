"""With tokens (MYSISTERDB_API_TOKENS), the page signs in once, and a session that ends while
the page is open (expired, or signed out elsewhere) brings the person back to the sign-in
form and then to the same conversation, not to a page whose every request fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from mysisterdb.redis_server import RedisServer
from tests.conftest import start_stack
from tests.procs import Stack
from tests.ui.conftest import DESKTOP, UI_LIMITS, ChatPage, loopback

TOKEN = "hanako-token-0123456789abcdef"
SIGNIN_DB = 3  # the ui stack uses db 0 of the same private redis-server


@pytest.fixture(scope="module")
def token_stack(ui_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Stack]:
    url = f"redis://{ui_redis.host}:{ui_redis.port}/{SIGNIN_DB}"
    running = start_stack(redis_url=url, log_dir=tmp_path_factory.mktemp("signin"),
                          extra={**UI_LIMITS, "MYSISTERDB_API_TOKENS": f"hanako:{TOKEN}"})
    yield running
    running.stop()


def sign_in(chat: ChatPage, *, coming_back_to: str, shot: str) -> None:
    expect(chat.page).to_have_url(re.compile(r"/signin\?next="))
    expect(chat.page.locator("input[name=next]")).to_have_value(coming_back_to)
    chat.shot(shot)
    chat.page.fill("input[name=token]", TOKEN)
    chat.page.press("input[name=token]", "Enter")


def test_an_ended_session_signs_in_again_and_comes_back(
        playwright_browser: Browser, token_stack: Stack, artifacts_root: Path) -> None:
    shots = artifacts_root / "signin"
    shots.mkdir(exist_ok=True)
    context = playwright_browser.new_context(viewport=DESKTOP, locale="ja-JP")
    context.route(lambda url: not loopback(url), lambda route: route.abort())
    chat = ChatPage(context.new_page(), stack=token_stack, shots=shots)
    chat.allowed_console.append("401")  # Chromium logs the refused request itself
    try:
        chat.page.goto(f"{token_stack.api_url}/?conversation_id=diary")
        sign_in(chat, coming_back_to="/?conversation_id=diary", shot="first-visit")
        expect(chat.page).to_have_url(f"{token_stack.api_url}/?conversation_id=diary")
        chat.wait_ready()
        context.clear_cookies()  # the session ends while the page is open
        chat.send("まだいる？")
        sign_in(chat, coming_back_to="/?conversation_id=diary", shot="session-ended")
        expect(chat.page).to_have_url(f"{token_stack.api_url}/?conversation_id=diary")
        chat.wait_ready()
        chat.shot("back")
    finally:
        context.close()
    assert not chat.problems, chat.problems
    # The refused message was not stored: nothing the server accepted was lost either.
    stored = httpx.get(f"{token_stack.api_url}/api/conversations/diary/messages", timeout=5,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert stored.status_code == 404 or stored.json()["turns"] == []
