"""HEAD answered wherever GET is: uptime monitors send HEAD, and FastAPI's routes answered it
with 405. Against the real API (raw HTTP, so that a body sent after the headers would be
seen), and the middleware alone for the event stream it must end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.types import Message

from api.head import HeadAsGet
from tests.procs import Stack


def raw_head(api_url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HEAD over a fresh connection that the server closes: what follows the headers
    up to the close is the body the server sent."""
    url = urlsplit(api_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("path", ["/", "/api/health", "/api/current-time", "/favicon.ico"])
def test_head_answers_like_get_without_a_body(stack: Stack, path: str) -> None:
    get = httpx.get(f"{stack.api_url}{path}", timeout=5)
    status, headers, body = raw_head(stack.api_url, path)
    assert (status, body) == (200, b""), (path, status, body[:200])
    assert get.status_code == 200
    assert headers["content-type"] == get.headers["content-type"]


def test_head_of_an_unknown_path_is_404_without_a_body(stack: Stack) -> None:
    status, headers, body = raw_head(stack.api_url, "/no/such/page")
    assert (status, body) == (404, b"")
    assert headers["content-type"].startswith("application/json")


def test_head_is_not_in_the_openapi_document(stack: Stack) -> None:
    paths = httpx.get(f"{stack.api_url}/openapi.json", timeout=5).json()["paths"]
    assert "head" not in {method for ops in paths.values() for method in ops}
    assert "get" in paths["/api/health"]


def test_head_of_a_stream_ends_it_once_the_headers_are_out() -> None:
    """A HEAD of the event stream must not keep the stream running for nobody (it would
    hold a follower for up to 300 s). spec_version 2.3, as uvicorn says: Starlette then
    learns of a gone client through receive()."""
    ended = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.01)
        finally:
            ended.set()

    app = FastAPI()

    @app.get("/events")
    def events() -> StreamingResponse:
        return StreamingResponse(endless(), media_type="text/event-stream")

    sent: list[Message] = []
    first = True

    async def receive() -> Message:  # a client that stays connected
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "HEAD", "scheme": "http", "path": "/events",
             "raw_path": b"/events", "query_string": b"", "root_path": "", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def run() -> None:
        await asyncio.wait_for(HeadAsGet(app)(scope, receive, send), timeout=5)

    asyncio.run(run())
    assert ended.is_set()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}
