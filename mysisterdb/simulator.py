"""An offline stand-in for Gemini that speaks the Generative Language REST protocol.

The real google-generativeai SDK is pointed at it (transport="rest"), so offline mode and
the tests exercise the very code path production uses. Directives in the last user
message make it misbehave on purpose:

    #sim:hang            never answers
    #sim:sleep=SECONDS   answers after a delay
    #sim:error=CODE      answers with that HTTP status (429, 500, ...)
    #sim:stall           streams one chunk, then nothing, never ending
    #sim:garbage         answers with a malformed body

The last 100 request bodies, as received, are at GET /_sim/requests (newest last).
Headers are never recorded: they carry the API key.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

DIRECTIVE = re.compile(r"#sim:(hang|stall|garbage|sleep=(\d+(?:\.\d+)?)|error=(\d{3}))")
HANG_FOREVER_S = 24 * 3600
STATUS_NAMES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents") or []):
        if content.get("role", "user") == "user":
            return "".join(p.get("text", "") for p in content.get("parts") or [])
    return ""


def reply_chunks(text: str) -> list[str]:
    """A short deterministic in-character reply, cut into a few stream chunks."""
    topic = DIRECTIVE.sub("", text).strip().replace("\n", " ")[:24] or "それ"
    return [
        "えへへ、お兄ちゃん！",
        f"「{topic}」のことだね。",
        "しぃは今オフラインのシミュレーターだから、",
        "くわしいことは答えられないけど、ちゃんと聞いてるよ♪",
    ]


def chunk_payload(text: str, *, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                 "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "modelVersion": "mysisterdb-simulator"}


def error_response(code: int) -> JSONResponse:
    status = STATUS_NAMES.get(code, "UNKNOWN")
    return JSONResponse(status_code=code, content={"error": {
        "code": code, "message": f"simulated error {code}", "status": status}})


async def stream_body(chunks: list[str], *, stall: bool) -> AsyncIterator[bytes]:
    for i, text in enumerate(chunks):
        prefix = "[" if i == 0 else ",\r\n"
        yield (prefix + json.dumps(chunk_payload(text, last=i == len(chunks) - 1),
                                   ensure_ascii=False)).encode()
        if stall:
            await asyncio.sleep(HANG_FOREVER_S)
        await asyncio.sleep(0.02)
    yield b"]"


def create_app() -> FastAPI:
    app = FastAPI(title="MySisterDB Gemini simulator")
    received: deque[Any] = deque(maxlen=100)

    async def answer(request: Request, *, stream: bool) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        received.append(body)
        text = last_user_text(body) if isinstance(body, dict) else ""
        match = DIRECTIVE.search(text)
        directive = match.group(1) if match else ""
        if directive == "hang":
            await asyncio.sleep(HANG_FOREVER_S)
        if match and match.group(2):
            await asyncio.sleep(float(match.group(2)))
        if match and match.group(3):
            return error_response(int(match.group(3)))
        if directive == "garbage":
            return Response(content=b"{\"candidates\": [ this is not json", status_code=200,
                            media_type="application/json")
        chunks = reply_chunks(text)
        if stream:
            return StreamingResponse(stream_body(chunks, stall=directive == "stall"),
                                     media_type="application/json")
        return JSONResponse(chunk_payload("".join(chunks), last=True))

    @app.post("/v1beta/models/{model}:generateContent")
    async def generate(model: str, request: Request) -> Response:
        return await answer(request, stream=False)

    @app.post("/v1beta/models/{model}:streamGenerateContent")
    async def stream_generate(model: str, request: Request) -> Response:
        return await answer(request, stream=True)

    @app.get("/v1beta/models/{model}")
    async def model_info(model: str) -> dict[str, Any]:
        # What /api/health asks to see whether the endpoint answers (no generation).
        return {"name": f"models/{model}", "displayName": f"{model} (simulator)",
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]}

    @app.get("/_sim/requests")
    async def requests_seen() -> list[Any]:
        return list(received)

    @app.get("/_sim/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "mode": "simulator"}

    return app
