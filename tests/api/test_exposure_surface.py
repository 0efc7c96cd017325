"""A smaller surface for an exposed API (issue 18), against real API processes with tokens:
the API explorers behind sign-in with their files served by the app, health details for the
operator only, the state-changing GET only in open mode, and a cap on each person's open
event streams and long-polls, counted across API processes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from mysisterdb.redis_server import RedisServer
from tests.api.edge import ALICE, BOB, OPERATOR, TOKENS, bare_api, bearer
from tests.procs import Proc, wait_for

CAP = 2


@pytest.fixture(scope="module")
def apis(redis_server: RedisServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two API processes on one database (replicas), no worker: jobs stay queued."""
    extra = {**TOKENS, "MYSISTERDB_MAX_FOLLOWERS_PER_PERSON": str(CAP)}
    procs: list[Proc] = []
    urls = []
    try:
        for n in range(2):
            proc, url = bare_api(redis_server, tmp_path_factory.mktemp(f"surface{n}"),
                                 name=f"api-{n}", extra=extra)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            proc.stop()


def test_the_api_explorers_need_signing_in(apis: list[str]) -> None:
    url = apis[0]
    for page in ("/docs", "/redoc"):
        r = httpx.get(f"{url}{page}", timeout=5)
        assert r.status_code == 303 and r.headers["location"] == f"/signin?next={page}"
    assert httpx.get(f"{url}/openapi.json", timeout=5).status_code == 401
    for token in (ALICE, OPERATOR):
        document = httpx.get(f"{url}/openapi.json", headers=bearer(token), timeout=5)
        assert document.status_code == 200 and "/api/chat" in document.json()["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_explorers_load_nothing_from_elsewhere(apis: list[str], page: str) -> None:
    url = apis[0]
    r = httpx.get(f"{url}{page}", headers=bearer(ALICE), timeout=5)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "default-src 'none'" in csp
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    for source in sources:  # every file is the app's own, and open (no credentials)
        asset = httpx.get(f"{url}{source}", timeout=5)
        assert asset.status_code == 200 and len(asset.content) > 100, source


def test_health_tells_anyone_only_whether_it_is_up(apis: list[str]) -> None:
    url = apis[0]
    anyone = httpx.get(f"{url}/api/health", timeout=5)
    assert set(anyone.json()) == {"status", "ok", "time"}, anyone.text
    assert anyone.json()["ok"] is (anyone.status_code == 200)
    person = httpx.get(f"{url}/api/health", headers=bearer(ALICE), timeout=5).json()
    assert set(person) == {"status", "ok", "time"}
    operator = httpx.get(f"{url}/api/health", headers=bearer(OPERATOR), timeout=5).json()
    assert {"redis", "workers", "llm", "queue"} <= set(operator)
    assert "endpoint" in operator["llm"]


def test_the_state_changing_get_is_gone_with_tokens(apis: list[str]) -> None:
    r = httpx.get(f"{apis[0]}/api/reset_conversation", params={"conversation_id": "x1"},
                  headers=bearer(ALICE), timeout=5)
    assert r.status_code == 404 and "POST /api/conversations" in r.json()["error"]["message"]


def queued_job(url: str, token: str) -> str:
    r = httpx.post(f"{url}/api/chat", headers=bearer(token), timeout=5,
                   json={"message": "待っててね", "conversation_id": f"f-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_one_person_holds_a_bounded_number_of_streams(apis: list[str]) -> None:
    first, second = apis
    alices, bobs = queued_job(first, ALICE), queued_job(first, BOB)
    client = httpx.Client(timeout=httpx.Timeout(5, read=60))
    with client, ExitStack() as streams:
        for url in (first, second):  # one stream on each replica: the cap is across both
            stream = streams.enter_context(client.stream(
                "GET", f"{url}/api/jobs/{alices}/events", headers=bearer(ALICE)))
            assert stream.status_code == 200
        more = client.get(f"{second}/api/jobs/{alices}/events", headers=bearer(ALICE))
        assert more.status_code == 429 and more.json()["error"]["code"] == "too_many_streams"
        assert int(more.headers["retry-after"]) >= 1
        poll = client.get(f"{first}/api/jobs/{alices}", params={"wait": 1},
                          headers=bearer(ALICE))
        assert poll.status_code == 429  # a long-poll takes a slot too
        assert client.get(f"{first}/api/jobs/{alices}", headers=bearer(ALICE)).status_code == 200
        bob = client.get(f"{first}/api/jobs/{bobs}", params={"wait": 0.2},
                         headers=bearer(BOB))
        assert bob.status_code == 200  # the others are not affected
        streams.close()  # the client goes: its slots come back
        wait_for(lambda: client.get(f"{first}/api/jobs/{alices}", params={"wait": 0.1},
                                    headers=bearer(ALICE)).status_code == 200,
                 timeout_s=10, what="the slots to come back")
