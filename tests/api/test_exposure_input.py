"""Exposed without knowing the traps (issue 18), against real API processes: open mode only
while everything says "this machine only"; bounded input before anything reads it; the
scheme from trusted proxies only, and the https session cookie and HSTS that follow."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from mysisterdb.redis_server import RedisServer
from tests.api.edge import ALICE, TOKENS, bare_api, bearer
from tests.procs import Proc

GB = 1024**3
CHUNK = 1024 * 1024
RSS_MARGIN_MB = 20  # what a refused 1 GB upload may add to the API's memory, at most
SENT_MAX = 64 * CHUNK  # what the client gets to push before the answer (socket buffers)


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    proc, url = bare_api(redis_server, tmp_path_factory.mktemp("exposure-secured"),
                         name="api-secured", extra=TOKENS)
    yield proc, url
    proc.stop()


@pytest.fixture(scope="module")
def open_api(redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = bare_api(redis_server, tmp_path_factory.mktemp("exposure-open"), name="api-open")
    yield url
    proc.stop()


# -- 1. fail closed ------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"MYSISTERDB_PUBLIC_URL": "https://chat.example.com"},
    {"MYSISTERDB_ALLOWED_HOSTS": "localhost,127.0.0.1,::1,chat.example.com"},
], ids=["public-url", "allowed-host"])
def test_a_proxy_setup_without_tokens_needs_signing_in(
        redis_server: RedisServer, tmp_path: Path, extra: dict[str, str]) -> None:
    """The README's TLS recipe (a proxy on this machine to 127.0.0.1) with the tokens
    skipped: a generated token, not everyone as owner and operator."""
    proc, url = bare_api(redis_server, tmp_path, name="api-proxied", extra=extra)
    try:
        assert httpx.get(f"{url}/api/conversations", timeout=5).status_code == 401
        assert httpx.get(f"{url}/api/incidents", timeout=5).status_code == 401
        assert "Sign in: " in proc.log() and "#token=" in proc.log()
    finally:
        proc.stop()


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "203.0.113.9"}, {"X-Forwarded-Proto": "https"},
    {"Forwarded": "for=203.0.113.9;proto=https"}, {"X-Real-IP": "203.0.113.9"},
    {"X-Forwarded-Host": "chat.example.com"}, {"Host": "chat.example.com"},
], ids=lambda h: next(iter(h)))
def test_open_mode_refuses_what_came_through_a_proxy(open_api: str,
                                                     headers: dict[str, str]) -> None:
    r = httpx.get(f"{open_api}/api/conversations", headers=headers, timeout=5)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "proxy_needs_token" and "MYSISTERDB_API_TOKENS" in error["message"]


def test_open_mode_still_serves_this_machine(open_api: str) -> None:
    for host in ("127.0.0.1", "localhost:8000", "[::1]:8000"):
        r = httpx.get(f"{open_api}/api/conversations", headers={"Host": host}, timeout=5)
        assert r.status_code == 200, (host, r.text)


# -- 2. bounded input ----------------------------------------------------------------------

class Upload:
    """One gigabyte, counting what the client actually got to send."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        block = b" " * CHUNK
        for _ in range(GB // CHUNK):
            self.sent += CHUNK
            yield block


def rss_mb(proc: Proc) -> float:
    return psutil.Process(proc.process.pid).memory_info().rss / 2**20


def assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/api/chat", "/signin"])
def test_an_anonymous_gigabyte_is_refused_unread(secured: tuple[Proc, str], path: str) -> None:
    proc, url = secured
    small = httpx.post(f"{url}{path}", content=b"{}", timeout=5,
                       headers={"Content-Type": "application/json"})
    assert small.status_code in (401, 422), small.text  # an ordinary refusal, for the baseline
    before = rss_mb(proc)
    chunked = Upload()
    started = time.monotonic()
    r = httpx.post(f"{url}{path}", content=chunked, timeout=30,
                   headers={"Content-Type": "application/json"})
    assert_too_large(r)
    assert chunked.sent <= SENT_MAX, chunked.sent
    declared = Upload()
    r = httpx.post(f"{url}{path}", content=declared, timeout=30,
                   headers={"Content-Type": "application/json", "Content-Length": str(GB)})
    assert_too_large(r)
    assert declared.sent <= SENT_MAX, declared.sent
    assert time.monotonic() - started < 10
    assert rss_mb(proc) - before < RSS_MARGIN_MB, (before, rss_mb(proc))


def test_a_big_content_length_is_answered_before_any_body(secured: tuple[Proc, str]) -> None:
    _, url = secured
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
        answer = conn.recv(65536)  # nothing of the body was sent: the answer comes anyway
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()


def test_the_longest_message_still_fits(secured: tuple[Proc, str]) -> None:
    """The default limit is sized from MYSISTERDB_MAX_MESSAGE_CHARS: a message of 8000
    characters outside the BMP, sent as ASCII JSON escapes (12 bytes each), is accepted."""
    _, url = secured
    body = json.dumps({"message": "😀" * 8000, "conversation_id": "edge-longest"}).encode()
    assert len(body) > 96_000
    r = httpx.post(f"{url}/api/chat", content=body, timeout=10,
                   headers={**bearer(ALICE), "Content-Type": "application/json"})
    assert r.status_code != 413, r.text[:300]


def test_a_long_query_string_is_refused(secured: tuple[Proc, str]) -> None:
    _, url = secured
    r = httpx.get(f"{url}/api/current-time", params={"x": "y" * 5000}, timeout=5)
    assert r.status_code == 414 and r.json()["error"]["code"] == "uri_too_long"


def test_big_headers_are_refused(secured: tuple[Proc, str]) -> None:
    _, url = secured
    r = httpx.get(f"{url}/api/current-time", headers={"X-Big": "z" * 20_000}, timeout=5)
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert httpx.get(f"{url}/api/current-time", timeout=5).status_code == 200


# -- 3. behind a proxy ---------------------------------------------------------------------

def sign_in(url: str, **headers: str) -> httpx.Response:
    r = httpx.post(f"{url}/api/session", json={"token": ALICE}, timeout=5,
                   headers={"Origin": url, **headers})
    assert r.status_code == 204, r.text
    return r


def test_over_https_the_cookie_is_host_prefixed_and_hsts_is_sent(
        secured: tuple[Proc, str]) -> None:
    _, url = secured
    tls = sign_in(url, **{"X-Forwarded-Proto": "https"})  # from 127.0.0.1: trusted
    name, _, rest = tls.headers["set-cookie"].partition("=")
    assert name == "__Host-msdb_session"
    flags = {f.strip().lower() for f in rest.split(";")[1:]}
    assert {"secure", "httponly", "path=/", "samesite=strict"} <= flags
    assert not any(f.startswith("domain") for f in flags)
    assert tls.headers["strict-transport-security"] == "max-age=31536000"
    session = {name: rest.split(";")[0]}
    who = httpx.get(f"{url}/api/session", cookies=session, timeout=5)
    assert who.status_code == 200 and who.json()["person"] == "alice"
    plain = sign_in(url)
    assert plain.headers["set-cookie"].startswith("msdb_session=")
    assert "secure" not in plain.headers["set-cookie"].lower()
    assert "strict-transport-security" not in plain.headers


def test_a_forwarded_scheme_from_an_untrusted_address_is_ignored(
        redis_server: RedisServer, tmp_path: Path) -> None:
    proc, url = bare_api(redis_server, tmp_path, name="api-untrusting",
                         extra={**TOKENS, "MYSISTERDB_FORWARDED_ALLOW_IPS": "10.9.9.9"})
    try:
        r = sign_in(url, **{"X-Forwarded-Proto": "https"})
        assert r.headers["set-cookie"].startswith("msdb_session=")
        assert "secure" not in r.headers["set-cookie"].lower()
        assert "strict-transport-security" not in r.headers
    finally:
        proc.stop()
