"""The chat page: static files under api/static, no build step.

The page is told server-side whether replies come from the simulator and the longest message
accepted. Its scripts, styles and the vendored libraries are served from /static; the page
carries a Content-Security-Policy that allows only those (no inline script, no other origin),
so even a reply that slipped past the Markdown sanitizer could not run anything.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from api.deps import SettingsDep
from core import contract
from core.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = STATIC / "index.html"
NOTES = {
    "simulator": "オフラインモード：返事は Gemini ではなく、同梱のシミュレーターが返しています。",
    "gemini": "返事は Google Gemini が生成しています。",
}
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Revalidate every time (a cheap 304 thanks to the ETag): a new version shows on reload.
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {**COMMON_HEADERS, "Content-Security-Policy": CSP, "Referrer-Policy": "same-origin"}


@lru_cache(maxsize=1)
def template() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def chat_page(settings: SettingsDep) -> HTMLResponse:
    mode = settings.llm_mode
    page = (template().replace("__LLM_MODE__", mode)
            .replace("__LLM_NOTE__", html.escape(NOTES[mode]))
            .replace("__MAX_CHARS__", str(settings.max_message_chars))
            .replace("__CONVERSATION_ID__", html.escape(contract.CONVERSATION_ID)))
    return HTMLResponse(page, headers=PAGE_HEADERS)


def static_path(relative: str) -> Path:
    """A file under api/static with a known type; anything else (or outside it) is 404."""
    path = (STATIC / relative).resolve()
    if not path.is_relative_to(STATIC) or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise NotFound("ファイルが見つかりません。")
    return path


@router.get("/static/{relative:path}")
def static_file(relative: str) -> FileResponse:
    path = static_path(relative)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=COMMON_HEADERS)


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.ico", media_type=MEDIA_TYPES[".ico"],
                        headers=COMMON_HEADERS)
