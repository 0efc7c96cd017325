"""The old design, as a baseline: a synchronous FastAPI server that calls Gemini (here the
simulator) inside the request, with no timeout, as the first MySisterDB did.

Both endpoints are plain `def` endpoints, so FastAPI runs them in its thread pool (40 threads,
anyio's default): each prompt holds a thread for as long as Gemini takes, and a hung call
holds it for ever. Nothing of MySisterDB is used, on purpose.

    .venv/bin/python bench/sync_server.py --port 8100 --gemini http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

MODEL = "gemini-3.5-flash"


class ChatIn(BaseModel):
    message: str
    conversation_id: str = "default"


def create_app(gemini_url: str) -> FastAPI:
    app = FastAPI(title="sync baseline")
    client = httpx.Client(base_url=gemini_url, timeout=None)  # the old server had no timeout

    @app.post("/api/chat")
    def chat(body: ChatIn) -> dict[str, Any]:
        answer = client.post(f"/v1beta/models/{MODEL}:generateContent?key=bench", json={
            "contents": [{"role": "user", "parts": [{"text": body.message}]}]})
        parts = answer.json()["candidates"][0]["content"]["parts"]
        return {"reply": "".join(p.get("text", "") for p in parts)}

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gemini", required=True, help="simulator base URL")
    args = parser.parse_args()
    uvicorn.run(create_app(args.gemini), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
