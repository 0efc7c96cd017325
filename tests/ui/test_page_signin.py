"""With tokens (MYSISTERDB_API_TOKENS), the page signs in once, and a session that ends while
the page is open (expired, or signed out elsewhere) brings the person back to the sign-in
form and then to the same conversation, not to a page whose every request fails.

A sign-in link asks before it signs in (someone else's link would put the person's chats in
that account), the page shows who is signed in, and signing out ends the session on the
server: on a desktop and on a 375 px phone.

Tokens are the API's setting alone: these tests start a second API process with them, in front
of the page's stack (its Redis, worker and simulator), rather than a whole stack of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from mysisterdb.redis_server import free_port
from tests.procs import Stack, start_api
from tests.ui.conftest import DESKTOP, PHONE, ChatPage, loopback

TOKEN = "hanako-token-0123456789abcdef"
SOMEONE_ELSE = "mallory-token-0123456789abcdef"  # the person "mallory.x": a name with a dot


@pytest.fixture(scope="module")
def token_stack(ui_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The page's stack seen through an API with tokens: an API start (~1.7 s of CPU) where a
    whole stack of its own cost a worker and a simulator too."""
    log_dir = tmp_path_factory.mktemp("signin")
    env = {**ui_stack.env, "MYSISTERDB_PORT": str(free_port()), "MYSISTERDB_LOG_DIR": str(log_dir),
           "MYSISTERDB_API_TOKENS": f"hanako:{TOKEN},mallory.x:{SOMEONE_ELSE}"}
    api, url = start_api(env, log_dir=log_dir, name="token-api")
    running = Stack(api_url=url, sim_url=ui_stack.sim_url, redis_url=ui_stack.redis_url,
                    env=env, procs={"api": api})
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


def session_cookie(page: Page) -> dict[str, str]:
    return {c["name"]: c["value"] for c in page.context.cookies()
            if c["name"] == "msdb_session"}


def works(stack: Stack, cookies: dict[str, str]) -> bool:
    return httpx.get(f"{stack.api_url}/api/conversations", cookies=cookies,
                     timeout=5).status_code == 200


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_sign_in_link_asks_first_and_signing_out_ends_the_session(
        playwright_browser: Browser, token_stack: Stack, artifacts_root: Path,
        viewport: dict[str, int]) -> None:
    name = "phone" if viewport is PHONE else "desktop"
    shots = artifacts_root / f"signin-link-{name}"
    shots.mkdir(exist_ok=True)
    # Reduced motion: the phone's drawer is open, not sliding, when the screenshot is taken.
    context = playwright_browser.new_context(viewport=viewport, locale="ja-JP",
                                             reduced_motion="reduce")
    context.route(lambda url: not loopback(url), lambda route: route.abort())
    chat = ChatPage(context.new_page(), stack=token_stack, shots=shots)
    page = chat.page
    try:
        # Someone else's link: the page names whose it is, and nothing is signed in yet.
        page.goto(f"{token_stack.api_url}/signin#token={SOMEONE_ELSE}")
        expect(page.locator("#notice")).to_have_text("しぃ と話す人: mallory.x。サインインしますか？")
        assert "token" not in page.url  # taken out of the address bar and history
        assert session_cookie(page) == {}
        chat.shot("someone-elses-link")
        page.click("#decline")
        expect(page.locator("input[name=token]")).to_be_visible()
        assert session_cookie(page) == {}
        # One's own link (opened anew, as from a mail): only the click signs in.
        page.goto("about:blank")
        page.goto(f"{token_stack.api_url}/signin#token={TOKEN}")
        button = page.get_by_role("button", name="hanako としてサインインする")
        expect(button).to_be_focused()
        chat.shot("own-link")
        assert session_cookie(page) == {}
        button.click()
        chat.wait_ready()
        cookies = session_cookie(page)
        assert cookies and works(token_stack, cookies)
        if viewport is PHONE:
            page.click("#menu")  # the sidebar is a drawer on a phone
        expect(page.locator("#account-name")).to_have_text("hanako")
        expect(page.locator("#sign-out")).to_be_visible()
        chat.shot("signed-in")
        page.click("#sign-out")
        expect(page).to_have_url(f"{token_stack.api_url}/signin")
        chat.shot("signed-out")
        assert session_cookie(page) == {}
        assert not works(token_stack, cookies)  # a copy of the cookie is no use either
    finally:
        context.close()
    assert not chat.problems, chat.problems


def test_nobody_is_shown_signed_in_when_nobody_signs_in(
        open_page: Callable[..., ChatPage]) -> None:
    chat = open_page()  # the shared stack: loopback, no tokens
    expect(chat.page.locator("#account")).to_be_hidden()
