"""For everyone: a 375 px phone (drawer), keyboard-only use, labelled controls, announced
replies, WCAG AA contrast in light and dark, and the offline-mode notice always in view.
Also takes the README's screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Route, expect

from mysisterdb.simulator import reply_chunks
from tests.procs import ROOT, Stack
from tests.ui.conftest import PHONE, ChatPage, release

OpenPage = Callable[..., ChatPage]
UPDATE_README_SHOTS = "MYSISTERDB_UPDATE_SCREENSHOTS"
README_SHOTS = ROOT / "docs" / "screenshots"

# Every visible text against what is really behind it: (text, ratio, required) below AA.
CONTRAST = """() => {
  const rgba = (css) => {
    const m = css.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const [r, g, b, a = 1] = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return [r, g, b, a];
  };
  const over = (top, under) => top.slice(0, 3).map((c, i) => c * top[3] + under[i] * (1 - top[3]));
  const background = (el) => {
    const layers = [];
    for (let node = el; node; node = node.parentElement) {
      const bg = rgba(getComputedStyle(node).backgroundColor);
      if (bg && bg[3] > 0) layers.push(bg);
      if (bg && bg[3] === 1) break;
    }
    let color = [255, 255, 255];
    for (const layer of layers.reverse()) color = over(layer, color);
    return color;
  };
  const luminance = (rgb) => {
    const [r, g, b] = rgb.map((c) => {
      c /= 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const failures = [];
  const check = (el, style, label) => {
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const need = large ? 3 : 4.5;
    const fg = rgba(style.color);
    const got = ratio(over(fg, background(el)), background(el));
    if (got < need) failures.push([label, Math.round(got * 100) / 100, need]);
  };
  for (const el of document.querySelectorAll('body *')) {
    if (!el.checkVisibility({ visibilityProperty: true, opacityProperty: true })) continue;
    if (el.closest(':disabled, .visually-hidden')) continue;  // inactive controls are exempt
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (own) check(el, getComputedStyle(el), el.textContent.trim().slice(0, 40));
    if (el.matches('textarea[placeholder]') && !el.value)
      check(el, getComputedStyle(el, '::placeholder'), 'placeholder ' + el.placeholder);
  }
  return failures;
}"""


def many_states(chat: ChatPage, stack: Stack, name: str) -> None:
    """A conversation showing every kind of text the page has: a reply, a failure, a stop,
    a reply being written, a notice, the counter and the reconnecting banner."""
    chat.send("こんにちは！")
    expect(chat.turn(0).locator(".reply")).to_have_text("".join(reply_chunks("こんにちは！")))
    chat.send("失敗するかな #sim:error=500")
    expect(chat.turn(1).locator(".problem")).to_be_visible()
    chat.send(f"止めるね #sim:hold={name}-stop")
    expect(chat.turn(2).locator(".reply")).to_have_text(reply_chunks("")[0])
    chat.turn(2).get_by_role("button", name="返事の生成を停止").click()
    expect(chat.turn(2).locator(".problem")).to_be_visible()
    chat.send(f"まだ書いてる？ #sim:hold={name}")
    expect(chat.turn(3).locator(".reply")).to_have_text(reply_chunks("")[0])
    chat.page.fill("#message", "あ" * 9000)
    chat.page.press("#message", "Enter")
    expect(chat.page.locator("#notice")).to_be_visible()
    chat.page.evaluate("""() => { const c = document.getElementById('connection');
      c.hidden = false; c.textContent = 'サーバーに接続できません。2 秒後に再接続します…'; }""")


def test_text_meets_wcag_aa_contrast_in_light_and_dark(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    for dark in (False, True):
        chat = open_page(conversation_id=f"{conversation_id}-{'dark' if dark else 'light'}",
                         dark=dark)
        name = f"contrast-{conversation_id}-{dark}"
        many_states(chat, ui_stack, name)
        chat.shot("dark" if dark else "light", full_page=True)
        failures: list[Any] = chat.page.evaluate(CONTRAST)
        release(ui_stack, name)
        assert failures == [], failures


def test_controls_are_labelled_and_replies_are_announced(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    box = chat.page.get_by_role("textbox", name="しぃへのメッセージ")
    expect(box).to_be_visible()
    expect(box).to_have_attribute("aria-describedby", "composer-hint counter")
    chat.send("聞こえる？")
    expect(chat.turn(0).locator(".reply")).to_have_text("".join(reply_chunks("聞こえる？")))
    announcer = chat.page.locator("#announcer")
    expect(announcer).to_have_attribute("aria-live", "polite")
    expect(announcer).to_have_text("しぃ：" + "".join(reply_chunks("聞こえる？")))
    # Every control has a name a screen reader can say.
    unnamed = chat.page.evaluate("""() => [...document.querySelectorAll('button, a, textarea')]
      .filter((el) => el.checkVisibility())
      .filter((el) => !(el.getAttribute('aria-label') || el.textContent.trim() || el.labels?.length))
      .map((el) => el.outerHTML)""")
    assert unnamed == []
    # Who said what is spoken too, not only shown by colour and side.
    expect(chat.turn(0).locator(".msg.user")).to_have_text("あなた：聞こえる？")
    expect(chat.turn(0).locator(".msg.assistant .visually-hidden")).to_have_text("しぃ：")


def test_the_page_works_with_the_keyboard_alone(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    keyboard = chat.page.keyboard
    keyboard.press("Tab")
    expect(chat.page.get_by_role("link", name="入力欄へ移動")).to_be_focused()
    keyboard.press("Enter")
    expect(chat.page.locator("#message")).to_be_focused()
    name = f"keys-{conversation_id}"
    keyboard.type(f"キーボードだけで #sim:hold={name}")
    keyboard.press("Enter")
    expect(chat.turn(0).locator(".reply")).to_have_text(reply_chunks("")[0])
    keyboard.press("Shift+Tab")  # back from the box: the reply's stop button
    stop = chat.turn(0).get_by_role("button", name="返事の生成を停止")
    expect(stop).to_be_focused()
    chat.shot("stop-focused")
    # The stop's own answer comes late: the page learns of the end from its long-poll first.
    held: list[Route] = []
    chat.page.route("**/cancel", lambda route: held.append(route))
    keyboard.press("Enter")
    expect(stop).to_have_attribute("aria-disabled", "true")
    answer = held[0].fetch()  # the server stops the job now; the page hears it later
    expect(chat.turn(0).locator(".problem-text")).to_have_text("停止しました。")
    # The stop button went away with the reply's end: the focus moved to the retry button,
    # which works at once, even before the stop's answer.
    expect(chat.turn(0).get_by_role("button", name="もう一度試す")).to_be_focused()
    stopped_job = chat.turn(0).get_attribute("data-job-id") or ""
    keyboard.press("Enter")
    expect(chat.turn(0)).not_to_have_attribute("data-job-id", stopped_job)
    expect(stop).to_be_focused()  # and back, while the retried reply is written
    held[0].fulfill(response=answer)  # the late answer changes nothing
    expect(chat.turn(0).locator(".problem")).to_be_hidden()
    release(ui_stack, name)
    expect(chat.turn(0).locator(".reply")).to_have_text(
        "".join(reply_chunks(f"キーボードだけで #sim:hold={name}")))


def test_a_375_px_phone_gets_the_whole_page_and_a_drawer_for_the_list(
        open_page: OpenPage, ui_stack: Stack, conversation_id: str) -> None:
    ui_stack.wait_job(ui_stack.submit("前の話", conversation_id=f"{conversation_id}-before")["id"])
    chat = open_page(viewport=PHONE, conversation_id=conversation_id)
    page = chat.page
    for i in range(4):  # enough to scroll
        chat.send(f"スマホから{i}回目")
        expect(chat.turn(i).locator(".reply")).to_have_text("".join(reply_chunks(f"スマホから{i}回目")))
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for control in ("#message", "#send", "#menu"):
        box = page.locator(control).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], control
    # The offline notice stays in view wherever the conversation is scrolled.
    page.locator("#log").evaluate("(log) => { log.scrollTop = 0; }")
    banner = page.locator("#mode-banner")
    expect(banner).to_be_in_viewport()
    page.locator("#log").evaluate("(log) => { log.scrollTop = log.scrollHeight; }")
    expect(banner).to_be_in_viewport()
    expect(banner).to_contain_text("オフラインモード")
    chat.shot("phone")

    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    menu = page.get_by_role("button", name="会話一覧を開く")
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.focus()
    page.keyboard.press("Enter")
    expect(sidebar).to_be_in_viewport(ratio=1)  # slid all the way in
    expect(page.locator("#menu")).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#conversations a[aria-current=page]")).to_be_focused()
    chat.shot("phone-drawer")
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()
    expect(page.locator("#menu")).to_be_focused()

    page.locator("#menu").click()
    page.locator(f"#conversations a[data-id='{conversation_id}-before']").click()
    expect(sidebar).not_to_be_in_viewport()
    expect(chat.turn(0).locator(".user-text")).to_have_text("前の話")


def test_the_favicon_is_there(open_page: OpenPage) -> None:
    chat = open_page()
    icon = chat.page.request.get(f"{chat.stack.api_url}/favicon.ico")
    assert icon.ok and icon.headers["content-type"] == "image/x-icon"
    svg = chat.page.locator("link[rel=icon][type='image/svg+xml']").get_attribute("href")
    assert svg and chat.page.request.get(f"{chat.stack.api_url}{svg}").ok


def test_screenshots_for_the_readme(open_page: OpenPage, ui_stack: Stack) -> None:
    """Desktop (light) and phone (dark) as the README shows them. They are copied into
    docs/screenshots/ when MYSISTERDB_UPDATE_SCREENSHOTS=1 (run this test alone, so that the
    list holds only its own conversations)."""
    for other in ("週末どこか行きたいな", "今日の晩ごはん何がいい？"):
        ui_stack.wait_job(ui_stack.submit(other, conversation_id=f"readme-{len(other)}")["id"])
    desktop = open_page(conversation_id="readme-main")
    for text in ("ただいま！", "枡元といえば？ｗ", "明日の予定、覚えてる？"):
        desktop.send(text)
        expect(desktop.turns().last.locator(".reply")).to_have_text("".join(reply_chunks(text)))
    desktop.page.locator("#message").blur()
    desktop.page.locator("#more").click()  # the conversation's menu: export and import
    expect(desktop.page.locator("#conversation-menu")).to_be_visible()
    desktop_png = desktop.shot("desktop")
    phone = open_page(viewport=PHONE, dark=True, conversation_id="readme-main")
    expect(phone.turns()).to_have_count(3)
    phone_png = phone.shot("phone")
    if os.environ.get(UPDATE_README_SHOTS) == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(desktop_png, README_SHOTS / "desktop.png")
        shutil.copyfile(phone_png, README_SHOTS / "phone.png")
