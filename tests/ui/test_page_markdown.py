"""Replies render Markdown safely; user messages render as text. HTML or a javascript: link in
a reply runs nothing, whether it arrives live or from the history after a reload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Dialog, expect

from mysisterdb.simulator import reply_chunks
from tests.ui.conftest import ChatPage

OpenPage = Callable[..., ChatPage]

# The simulator quotes the first 24 characters of a message in its reply: these fit whole.
ECHOED = ["<svg onload=alert(1)>", "[x](javascript:alert(1))", "<p onclick=alert(1)>"]
# Longer ones, straight through the page's own renderer.
PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "[クリック](javascript:alert(1))",
    "[data](data:text/html,<script>alert(1)</script>)",
    "<script>alert(1)</script>",
    "<a href=\"javascript:alert(1)\">a</a>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "![画像](x\" onerror=\"alert(1))",
    "**太字** と `code` と [安全なリンク](https://example.com/)",
]

ACTIVE_CONTENT = """(root) => {
  const found = [];
  for (const el of root.querySelectorAll('*')) {
    if (['SCRIPT', 'IMG', 'SVG', 'IFRAME', 'OBJECT', 'EMBED', 'STYLE'].includes(el.tagName.toUpperCase()))
      found.push(el.outerHTML);
    for (const attr of el.attributes) {
      if (attr.name.startsWith('on') || /^\\s*(javascript|data|vbscript):/i.test(attr.value))
        found.push(el.tagName + ' ' + attr.name + '=' + attr.value);
    }
  }
  return found;
}"""


def watch_dialogs(chat: ChatPage) -> list[str]:
    opened: list[str] = []

    def seen(dialog: Dialog) -> None:
        opened.append(dialog.message)
        dialog.dismiss()

    chat.page.on("dialog", seen)
    return opened


def test_html_and_javascript_links_in_replies_and_messages_run_nothing(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    dialogs = watch_dialogs(chat)
    for i, payload in enumerate(ECHOED):
        chat.send(payload)
        expect(chat.turn(i).locator(".user-text")).to_have_text(payload)  # as text
        # The reply quotes it: shown as text, never as markup or a link.
        expect(chat.turn(i).locator(".reply")).to_have_text("".join(reply_chunks(payload)))
    assert chat.page.locator("#turns").evaluate(ACTIVE_CONTENT) == []
    assert chat.page.locator("#turns a").count() == 0
    chat.shot("injection-live")
    chat.page.reload()  # the same replies, from the history
    expect(chat.turns()).to_have_count(len(ECHOED))
    expect(chat.turn(0).locator(".reply")).to_have_text("".join(reply_chunks(ECHOED[0])))
    assert chat.page.locator("#turns").evaluate(ACTIVE_CONTENT) == []
    assert dialogs == []


def render(chat: ChatPage, texts: list[str]) -> Any:
    """Each text through the page's renderer (markdown-it + DOMPurify), inserted into the page."""
    return chat.page.evaluate("""async (texts) => {
      const { renderMarkdown } = await import('/static/js/markdown.js');
      const box = document.createElement('div');
      box.id = 'rendered';
      for (const text of texts) {
        const one = document.createElement('div');
        one.className = 'reply';
        one.append(renderMarkdown(text));
        box.append(one);
      }
      document.getElementById('log').append(box);
      return [...box.children].map((one) => one.innerHTML);
    }""", texts)


def test_the_renderer_keeps_markdown_and_drops_anything_active(
        open_page: OpenPage, conversation_id: str) -> None:
    chat = open_page(conversation_id=conversation_id)
    dialogs = watch_dialogs(chat)
    html = render(chat, PAYLOADS)
    chat.shot("rendered")
    assert chat.page.locator("#rendered").evaluate(ACTIVE_CONTENT) == [], html
    # Raw HTML is shown as text, not dropped: the reader sees what the model wrote.
    expect(chat.page.locator("#rendered .reply").nth(0)).to_have_text("<img src=x onerror=alert(1)>")
    # Markdown still works, and a safe link opens in a new tab without the page's referrer.
    safe = chat.page.locator("#rendered .reply").nth(len(PAYLOADS) - 1)
    expect(safe.locator("strong")).to_have_text("太字")
    expect(safe.locator("code")).to_have_text("code")
    link = safe.get_by_role("link", name="安全なリンク")
    expect(link).to_have_attribute("href", "https://example.com/")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    # The only links that survive are http(s).
    hrefs = chat.page.locator("#rendered a").evaluate_all("(links) => links.map((a) => a.href)")
    assert all(h.startswith("https://") for h in hrefs), hrefs
    assert dialogs == []


def test_the_page_forbids_inline_scripts(open_page: OpenPage) -> None:
    chat = open_page()
    chat.allowed_console += ["Content Security Policy", "status of 404"]
    dialogs = watch_dialogs(chat)
    # Even markup that reached the DOM could not run: the policy blocks inline handlers.
    chat.page.evaluate("""() => {
      const div = document.createElement('div');
      div.innerHTML = '<img src="/nothing-here" onerror="window.__ran = true">';
      document.body.append(div);
    }""")
    expect(chat.page.locator("img[src='/nothing-here']")).to_have_js_property("complete", True)
    assert chat.page.evaluate("window.__ran === undefined")
    assert dialogs == []
