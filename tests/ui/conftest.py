"""Browser tests of the chat page: Playwright for Python driving the system's Chromium (never a
downloaded one) against a real stack (redis-server, Celery worker, API, Gemini simulator).

The stack is the page's own, started once for tests/ui and stopped when they end (package
scope: it does not idle beside the rest of the suite): a private redis-server (so a test can
freeze it and see the page get a real 503) and Gemini limits long enough that a stream held by
the simulator (3 s at most) is not cut by the read timeout first.

Chromium comes from PATH (`chromium`, as Debian's package installs it) or from
MYSISTERDB_TEST_CHROMIUM; without one the tests are skipped with a line saying how to get it
(failed instead with MYSISTERDB_TEST_REQUIRE_CHROMIUM=1, as CI sets it).
Every scene saves screenshots under test-artifacts/ui/<test>/ (or MYSISTERDB_TEST_ARTIFACTS),
and each page's last state as end.png, whether the test passed or failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from mysisterdb.redis_server import RedisServer, start_redis
from tests.conftest import start_stack
from tests.procs import ROOT, Stack, http_ok, mysisterdb, start, wait_for

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Page,
        Playwright,
        expect,
        sync_playwright,
    )
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # the dev extras are not installed: every browser test skips
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM_SETTING = "MYSISTERDB_TEST_CHROMIUM"
REQUIRE_SETTING = "MYSISTERDB_TEST_REQUIRE_CHROMIUM"  # CI: fail rather than skip
ARTIFACTS_SETTING = "MYSISTERDB_TEST_ARTIFACTS"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
HOW_TO_GET_CHROMIUM = (
    "no Chromium for the browser tests: install Debian's package (`sudo apt-get install -y "
    f"chromium`) or point {CHROMIUM_SETTING} at a Chromium/Chrome binary; they never download one")
# Root in CI (no sandbox possible), and no traffic but to the page's own server.
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_LIMITS = {
    "MYSISTERDB_GEMINI_TIMEOUT": "4",  # above the simulator's 3 s hold
    # Room for a worker child's first prompt on a busy 2-core machine (imports, tokenizer).
    "MYSISTERDB_TASK_SOFT_TIME_LIMIT": "10",
    "MYSISTERDB_TASK_TIME_LIMIT": "12",
    "MYSISTERDB_MAX_QUEUE_DEPTH": "2",  # a real 429 needs only two prompts waiting
}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
EXPECT_TIMEOUT_MS = 15000


def find_chromium() -> str | None:
    configured = os.environ.get(CHROMIUM_SETTING)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def unavailable(reason: str) -> None:
    print(reason)
    if os.environ.get(REQUIRE_SETTING) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SETTING}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="package")
def chromium_path() -> str:
    if sync_playwright is None:
        unavailable("playwright is not installed: `make install` installs the dev extras")
    path = find_chromium()
    if path is None:
        unavailable(HOW_TO_GET_CHROMIUM)
    assert path is not None
    return path


@pytest.fixture(scope="package")
def playwright_browser(chromium_path: str) -> Iterator[Browser]:
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = launch(playwright, chromium_path)
        yield browser
        browser.close()


def launch(playwright: Playwright, chromium_path: str) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path, args=LAUNCH_ARGS,
                                      timeout=60000)


@pytest.fixture(scope="package")
def ui_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def ui_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-stack")


@pytest.fixture(scope="package")
def ui_stack(ui_redis: RedisServer, ui_logs: Path) -> Iterator[Stack]:
    running = start_stack(redis_url=ui_redis.url, log_dir=ui_logs, extra=UI_LIMITS)
    # Both worker children answer once before the scenes: a scene never waits on a cold start.
    warmups = [running.submit("こんにちは", conversation_id=f"warmup-{i}") for i in range(2)]
    for job in warmups:
        running.wait_job(job["id"], timeout_s=60)
    for i in range(2):
        httpx.delete(f"{running.api_url}/api/conversations/warmup-{i}", timeout=5)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def artifacts_root() -> Path:
    root = Path(os.environ.get(ARTIFACTS_SETTING) or ROOT / "test-artifacts") / "ui"
    # The folder shows this run only, all of it: once per session (pytest-randomly interleaves
    # packages, so a package fixture would be set up, and the folder emptied, more than once).
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"browser test screenshots: {root}")
    return root


def loopback(url: str) -> bool:
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


class ChatPage:
    """One browser tab on the chat page, with the few moves the scenes need."""

    def __init__(self, page: Page, *, stack: Stack, shots: Path) -> None:
        self.page = page
        self.stack = stack
        self.shots = shots
        self.problems: list[str] = []
        page.on("pageerror", lambda err: self.problems.append(f"uncaught: {err}"))
        page.on("console", lambda msg: msg.type == "error" and not self.expected_console(msg.text)
                and self.problems.append(f"console.error: {msg.text}"))
        self.allowed_console: list[str] = []

    def expected_console(self, text: str) -> bool:
        # Chromium logs every failed request itself; the scenes that cause one say so.
        return any(part in text for part in self.allowed_console)

    def open(self, conversation_id: str | None = None) -> ChatPage:
        query = "" if conversation_id is None else f"/?conversation_id={conversation_id}"
        self.page.goto(f"{self.stack.api_url}{query or '/'}")
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        # A locator, not wait_for_function: the page's CSP forbids the eval the latter uses.
        expect(self.page.locator("html")).to_have_attribute("data-state", "ready")

    def send(self, text: str) -> None:
        self.page.fill("#message", text)
        self.page.press("#message", "Enter")

    def turns(self) -> Any:
        return self.page.locator("#turns > li")

    def turn(self, index: int) -> Any:
        return self.turns().nth(index)

    def shot(self, name: str, *, full_page: bool = False) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def open_page(playwright_browser: Browser, ui_stack: Stack, artifacts_root: Path,
              request: pytest.FixtureRequest) -> Iterator[Callable[..., ChatPage]]:
    """open_page(viewport=DESKTOP, dark=False, conversation_id=None) -> ChatPage; the page's
    uncaught errors and console errors fail the test."""
    shots = artifacts_root / request.node.name
    shots.mkdir(parents=True, exist_ok=True)
    contexts: list[BrowserContext] = []
    pages: list[ChatPage] = []

    def open_one(*, viewport: dict[str, int] | None = None, dark: bool = False,
                 conversation_id: str | None = None, navigate: bool = True) -> ChatPage:
        context = playwright_browser.new_context(
            viewport=viewport or DESKTOP, color_scheme="dark" if dark else "light",
            locale="ja-JP", timezone_id="Asia/Tokyo")
        # Tests talk to loopback only: anything else the page asked for would fail here.
        context.route(lambda url: not loopback(url), lambda route: route.abort())
        contexts.append(context)
        chat = ChatPage(context.new_page(), stack=ui_stack, shots=shots)
        pages.append(chat)
        if navigate:
            chat.open(conversation_id)
        return chat

    yield open_one
    for i, chat in enumerate(pages):  # how each page ended, passed or failed
        with contextlib.suppress(PlaywrightError):
            chat.shot(f"end-{i + 1}" if len(pages) > 1 else "end")
    for context in contexts:
        context.close()
    problems = [p for chat in pages for p in chat.problems]
    assert not problems, problems


# -- the simulator and the stack ---------------------------------------------------------------


def release(stack: Stack, name: str) -> None:
    httpx.post(f"{stack.sim_url}/_sim/release/{name}", timeout=5).raise_for_status()


def hold_state(stack: Stack, name: str) -> str:
    state = httpx.get(f"{stack.sim_url}/_sim/holds/{name}", timeout=5).json()["state"]
    assert isinstance(state, str)
    return state


def stop_simulator(stack: Stack) -> None:
    stack.procs["simulator"].stop()


def start_simulator(stack: Stack, *, log_dir: Path) -> None:
    stack.procs["simulator"] = start("simulator", mysisterdb("simulator"), env=stack.env,
                                     log_dir=log_dir)
    wait_for(http_ok(f"{stack.sim_url}/_sim/health"), timeout_s=20, what="simulator")


def history(stack: Stack, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.api_url}/api/conversations/{conversation_id}/messages",
                         timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]
