"""Who may do what, against a real stack with tokens: two people and an operator.

Every operation of /openapi.json is tried without credentials and with the other person's
token (so a route added later is covered without anyone remembering it): 401 or 404, and
the first person's conversation and job are unchanged, byte for byte. Then the browser
defences (Host, Origin, the state-changing GET), the sign-in page and its cookie, the
operator routes, person-scoped Idempotency-Keys, the per-person rate limit, and no token in
any log.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from core import keys
from core.namespaces import external_id
from mysisterdb.redis_server import RedisServer
from tests.conftest import start_stack
from tests.procs import Stack, wait_for

SECURITY_DB = 4
ALICE = "alice-token-" + "a" * 24
BOB = "bob-token-" + "b" * 24
CAROL = "carol-token-" + "c" * 24  # only for the rate limit
OPERATOR = "operator-token-" + "o" * 24
RATE = 6  # per minute and person
OPEN_PATHS = {"/api/health", "/api/current-time", "/api/session"}
OPERATOR_PATHS = {"/api/queue", "/api/incidents", "/metrics"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Secured:
    stack: Stack
    redis: redis.Redis

    @property
    def url(self) -> str:
        return self.stack.api_url

    def submit(self, token: str, cid: str, text: str, **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}/api/chat", timeout=5, headers={**bearer(token), **headers},
                          json={"message": text, "conversation_id": cid})

    def wait_final(self, token: str, job_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/jobs/{job_id}", params={"wait": 20, "after": 0},
                      headers=bearer(token), timeout=30)
        job: dict[str, Any] = r.json()
        while job["status"] in ("queued", "in_progress"):
            job = httpx.get(f"{self.url}/api/jobs/{job_id}", headers=bearer(token), timeout=30,
                            params={"wait": 20, "after": job["sequence"]}).json()
        return job


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    url = f"redis://{redis_server.host}:{redis_server.port}/{SECURITY_DB}"
    client = redis.Redis.from_url(url, socket_timeout=5)
    client.flushdb()
    running = start_stack(redis_url=url, log_dir=tmp_path_factory.mktemp("security"), extra={
        "MYSISTERDB_API_TOKENS": f"alice:{ALICE},bob:{BOB},carol:{CAROL}",
        "MYSISTERDB_OPERATOR_TOKEN": OPERATOR,
        "MYSISTERDB_RATE_LIMIT": f"{RATE}/minute"})
    yield Secured(stack=running, redis=client)
    running.stop()
    client.close()


@pytest.fixture(scope="module")
def alices(secured: Secured) -> tuple[str, str]:
    """Alice's conversation with one finished turn: (conversation id, job id)."""
    cid = f"alice-{uuid.uuid4().hex[:8]}"
    r = secured.submit(ALICE, cid, "アリスの秘密の話")
    assert r.status_code == 202, r.text
    secured.wait_final(ALICE, r.json()["id"])  # how it ended (a slow LLM call) is not the point
    # The worker's own last write: the summary task it may queue after a turn.
    wait_for(lambda: not secured.redis.exists(keys.conv_summarizing(cid)), timeout_s=60,
             what="the summary task to finish")
    return cid, r.json()["id"]


def snapshot(client: redis.Redis, cid: str, job_id: str) -> dict[bytes, bytes | None]:
    """Every key of the conversation and the job, as Redis DUMPs them."""
    names = list(client.scan_iter(match=keys.conv_prefix(cid) + "*", count=1000))
    names += [keys.job(job_id).encode(), keys.person_conversations("alice").encode()]
    return {name: client.dump(name) for name in sorted(names)}


def operations(url: str) -> list[tuple[str, str]]:
    document = httpx.get(f"{url}/openapi.json", timeout=5).json()
    return [(method.upper(), path) for path, ops in document["paths"].items()
            for method in ops]


def call(url: str, method: str, path: str, *, cid: str, job_id: str,
         headers: dict[str, str]) -> httpx.Response:
    target = (path.replace("{conversation_id}", cid).replace("{job_id}", job_id)
              .replace("{turn}", "1"))
    body = ({"message": "横取り", "conversation_id": cid, "index": 0}
            if method in ("POST", "PUT") else None)
    params = {"conversation_id": cid} if path == "/api/reset_conversation" else None
    return httpx.request(method, f"{url}{target}", json=body, params=params, headers=headers,
                         timeout=10)


def listed_ids(response: httpx.Response) -> set[str]:
    return {c["id"] for c in response.json()["conversations"]}


def alices_ids(secured: Secured) -> set[str]:
    """What Alice has written in: the conversations the owner key gives her, by the names
    she gave them (stored as "{name}~alice": core/namespaces.py)."""
    return {external_id(key.decode().split(":")[2])
            for key in secured.redis.keys("msdb:conv:*:owner")
            if secured.redis.get(key) == b"alice"}


def test_every_route_refuses_no_token_and_the_other_person(
        secured: Secured, alices: tuple[str, str]) -> None:
    cid, job_id = alices
    before = snapshot(secured.redis, cid, job_id)
    ops = operations(secured.url) + [("GET", "/metrics"), ("GET", "/")]
    assert ("DELETE", "/api/conversations/{conversation_id}") in ops  # the document is read
    for method, path in ops:
        if path in OPEN_PATHS:
            continue
        anonymous = call(secured.url, method, path, cid=cid, job_id=job_id, headers={})
        expected = 303 if path == "/" else 401
        assert anonymous.status_code == expected, (method, path, anonymous.text)
    # Bob, on every route, with Alice's conversation and job ids and then with ids nobody
    # used: the same answers (no route tells him whether her ids exist), never her words.
    free_cid, free_job = f"free-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    theirs, free = [], []
    for method, path in ops:
        if path in OPEN_PATHS:
            continue
        other = call(secured.url, method, path, cid=cid, job_id=job_id, headers=bearer(BOB))
        assert "アリスの秘密" not in other.text, (method, path)
        if path in OPERATOR_PATHS:
            assert other.status_code == 403, (method, path)
        theirs.append((method, path, other.status_code))
        control = call(secured.url, method, path, cid=free_cid, job_id=free_job,
                       headers=bearer(BOB))
        free.append((method, path, control.status_code))
    assert theirs == free
    assert ("GET", "/api/jobs/{job_id}", 404) in theirs
    assert secured.wait_final(ALICE, job_id)["status"] != "cancelled"
    assert snapshot(secured.redis, cid, job_id) == before  # nothing of hers changed


def test_alice_sees_her_own_and_the_operator_sees_the_queue(
        secured: Secured, alices: tuple[str, str]) -> None:
    cid, job_id = alices
    listed = httpx.get(f"{secured.url}/api/conversations", headers=bearer(ALICE), timeout=5)
    assert cid in listed_ids(listed) and listed_ids(listed) == alices_ids(secured)
    turns = httpx.get(f"{secured.url}/api/conversations/{cid}/messages", headers=bearer(ALICE),
                      timeout=5).json()["turns"]
    assert turns[0]["user"]["text"] == "アリスの秘密の話"
    for path in OPERATOR_PATHS:
        assert httpx.get(f"{secured.url}{path}", headers=bearer(OPERATOR),
                         timeout=5).status_code == 200
        assert httpx.get(f"{secured.url}{path}", headers=bearer(ALICE),
                         timeout=5).status_code == 403
    r = httpx.get(f"{secured.url}/api/conversations", headers=bearer(OPERATOR), timeout=5)
    assert r.status_code == 403  # the operator's token has no conversations
    r = httpx.get(f"{secured.url}/api/conversations", headers=bearer(ALICE + "x"), timeout=5)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "unauthorized"


def test_health_and_time_stay_open(secured: Secured) -> None:
    assert httpx.get(f"{secured.url}/api/current-time", timeout=5).status_code == 200
    assert httpx.get(f"{secured.url}/api/health", timeout=5).json()["redis"]["ok"] is True


def test_idempotency_keys_are_each_persons_own(secured: Secured) -> None:
    run = uuid.uuid4().hex[:8]
    a = secured.submit(ALICE, f"a-{run}", "同じキー", **{"Idempotency-Key": f"k-{run}"})
    b = secured.submit(BOB, f"b-{run}", "同じキー", **{"Idempotency-Key": f"k-{run}"})
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert a.json()["id"] != b.json()["id"]
    assert b.json()["conversation_id"] == f"b-{run}"
    again = secured.submit(ALICE, f"a-{run}", "同じキー", **{"Idempotency-Key": f"k-{run}"})
    assert again.json()["id"] == a.json()["id"]  # a resend still finds her own
    # Bob writing to the same name writes in his own conversation, never in hers.
    bobs = secured.submit(BOB, f"a-{run}", "割り込み")
    assert bobs.status_code == 202 and bobs.json()["conversation_id"] == f"a-{run}"
    for token, job in ((ALICE, a), (BOB, b), (BOB, bobs)):
        secured.wait_final(token, job.json()["id"])
    hers = httpx.get(f"{secured.url}/api/conversations/a-{run}/messages", headers=bearer(ALICE),
                     timeout=5).json()["turns"]
    his = httpx.get(f"{secured.url}/api/conversations/a-{run}/messages", headers=bearer(BOB),
                    timeout=5).json()["turns"]
    assert [t["user"]["text"] for t in hers] == ["同じキー"]
    assert [t["user"]["text"] for t in his] == ["割り込み"]


def test_a_foreign_host_is_refused(secured: Secured) -> None:
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io"):
        r = httpx.get(f"{secured.url}/api/current-time", headers={"Host": host}, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
    ok = httpx.get(f"{secured.url}/api/current-time", headers={"Host": "localhost:8000"},
                   timeout=5)
    assert ok.status_code == 200


def test_a_foreign_origin_cannot_change_anything(secured: Secured) -> None:
    cid = f"origin-{uuid.uuid4().hex[:8]}"
    for origin in ("https://evil.example", "null", "http://localhost:9999"):
        r = secured.submit(ALICE, cid, "よそのページから", Origin=origin)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site", origin
    assert not secured.redis.exists(keys.conv_turn(cid))  # nothing was stored
    reset = httpx.get(f"{secured.url}/api/reset_conversation", params={"conversation_id": cid},
                      headers={**bearer(ALICE), "Sec-Fetch-Site": "cross-site"}, timeout=5)
    assert reset.status_code == 403
    # The same requests from the API's own page, and the runbook's GET reset with a token.
    own = secured.stack.api_url
    r = secured.submit(ALICE, cid, "自分のページから", Origin=own, **{"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 202, r.text
    secured.wait_final(ALICE, r.json()["id"])
    reset = httpx.get(f"{secured.url}/api/reset_conversation", params={"conversation_id": cid},
                      headers=bearer(ALICE), timeout=5)
    assert reset.status_code == 200 and reset.json()["reset"] is True
    assert httpx.options(f"{secured.url}/api/chat", timeout=5, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    ).headers.get("access-control-allow-origin") is None  # no CORS unless configured


def test_the_page_signs_in_once_with_a_strict_http_only_cookie(
        secured: Secured, alices: tuple[str, str]) -> None:
    cid, _ = alices
    page = httpx.get(f"{secured.url}/", timeout=5)
    assert page.status_code == 303 and page.headers["location"] == "/signin?next=/"
    deep = httpx.get(f"{secured.url}/", params={"conversation_id": cid}, timeout=5)
    assert deep.headers["location"] == f"/signin?next=/%3Fconversation_id%3D{cid}"
    back = httpx.get(f"{secured.url}{deep.headers['location']}", timeout=5)
    assert f'value="/?conversation_id={cid}"' in back.text  # signed in, back to it
    form = httpx.get(f"{secured.url}/signin", params={"next": "//evil.example/"}, timeout=5)
    assert form.status_code == 200 and 'value="/"' in form.text  # never off-site
    csp = form.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp
    assert form.headers["x-content-type-options"] == "nosniff"
    # same-origin, not no-referrer: with no-referrer a browser sends the sign-in form's POST
    # with `Origin: null`, which the cross-site check must refuse (seen in Chromium).
    assert form.headers["referrer-policy"] == "same-origin"
    own = {"Origin": secured.url}
    wrong = httpx.post(f"{secured.url}/signin", data={"token": BOB + "x", "next": "/"},
                       headers=own, timeout=5)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    signed = httpx.post(f"{secured.url}/signin", data={"token": ALICE, "next": "/"},
                        headers=own, timeout=5)
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    cookie = signed.headers["set-cookie"]
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags and "secure" not in flags
    assert ALICE not in cookie  # the cookie carries a signature, not the token
    session = dict(cookie.split(";")[0].split("=", 1) for _ in [0])
    listed = httpx.get(f"{secured.url}/api/conversations", cookies=session, timeout=5)
    assert listed_ids(listed) == alices_ids(secured) and cid in listed_ids(listed)
    assert httpx.get(f"{secured.url}/api/session", cookies=session,
                     timeout=5).json()["person"] == "alice"
    assert httpx.get(f"{secured.url}/", cookies=session, timeout=5).status_code == 200
    tampered = {k: v[:-2] + "xx" for k, v in session.items()}
    assert httpx.get(f"{secured.url}/api/conversations", cookies=tampered,
                     timeout=5).status_code == 401
    # Behind a TLS proxy (X-Forwarded-Proto from loopback, which uvicorn trusts): Secure.
    tls = httpx.post(f"{secured.url}/api/session", json={"token": ALICE}, timeout=5,
                     headers={**own, "X-Forwarded-Proto": "https"})
    assert tls.status_code == 204 and "secure" in tls.headers["set-cookie"].lower()


def test_one_person_is_rate_limited_and_the_others_are_not(secured: Secured) -> None:
    run = uuid.uuid4().hex[:8]
    answers = [secured.submit(CAROL, f"c-{run}", f"{n} 回目") for n in range(RATE + 1)]
    assert [r.status_code for r in answers[:RATE]] == [202] * RATE
    limited = answers[RATE]
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    turns = httpx.get(f"{secured.url}/api/conversations/c-{run}/messages",
                      headers=bearer(CAROL), timeout=5).json()["turns"]
    assert len(turns) == RATE  # the refused one was not stored
    other = secured.submit(BOB, f"b2-{run}", "ぼくは大丈夫")
    assert other.status_code == 202
    for r in [*answers[:RATE], other]:
        token = BOB if r is other else CAROL
        secured.wait_final(token, r.json()["id"])


def test_no_token_reaches_a_log(secured: Secured) -> None:
    for token in (ALICE, BOB + "x", OPERATOR):  # a sign-in, a wrong one, an operator's
        httpx.post(f"{secured.url}/api/session", json={"token": token}, timeout=5,
                   headers={"Origin": secured.url})
    logs = [p for proc in secured.stack.procs.values() for p in proc.log_path.parent.iterdir()
            if p.is_file()]
    assert logs
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "signed in" in text  # the sign-in was logged, without its token
    for token in (ALICE, BOB, CAROL, OPERATOR):
        assert token not in text
    assert not re.search(r"Bearer [A-Za-z0-9_-]{16,}", text)
