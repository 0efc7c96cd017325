"""The chat page: one static file, told server-side whether replies come from the simulator."""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.deps import SettingsDep

router = APIRouter(include_in_schema=False)

PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"
NOTES = {
    "simulator": "オフラインモード：返事は Gemini ではなく、同梱のシミュレーターが返しています。",
    "gemini": "返事は Google Gemini が生成しています。",
}


@lru_cache(maxsize=1)
def template() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def chat_page(settings: SettingsDep) -> HTMLResponse:
    mode = settings.llm_mode
    page = template().replace("__LLM_MODE__", mode).replace("__LLM_NOTE__",
                                                            html.escape(NOTES[mode]))
    return HTMLResponse(page)
