"""The page's sessions against real API processes: a sign-in link is only previewed, signing
out ends the session on every API process at once (two processes on one Redis, as replicas),
"sign out everywhere" ends all of a person's sessions, a name with a dot stays signed in,
cookies of the first format are refused cleanly, a cookie is never honoured while Redis
cannot say whether it was signed out, and failed sign-ins are throttled per address and in
all, with a bounded log. The operator token comes from a file (MYSISTERDB_OPERATOR_TOKEN_FILE).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from mysisterdb.redis_server import RedisServer, free_port
from tests.conftest import db_url, stack_env
from tests.procs import Proc, start_api

SESSIONS_DB = 7
THROTTLE_DB = 8
ALICE = "alice-token-" + "a" * 24
DOTTED = "dotted-token-" + "d" * 24  # the person "bob.smith"
OPERATOR = "operator-token-" + "o" * 24
PEOPLE = f"alice:{ALICE},bob.smith:{DOTTED}"
PER_ADDRESS, TOTAL = 3, 5  # failed sign-ins per minute in the throttled API


@dataclass
class Replicas:
    first: str
    second: str
    procs: list[Proc]
    env: dict[str, str]


def api_env(server: RedisServer, log_dir: Path, *, db: int,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    with redis.Redis.from_url(db_url(server, db), socket_timeout=5) as client:
        client.flushdb()  # failure counters of an earlier run are still in their window
    operator_file = log_dir / "operator-token"
    operator_file.write_text(OPERATOR + "\n")
    return stack_env(redis_url=db_url(server, db), api_port=free_port(), sim_port=free_port(),
                     log_dir=log_dir, extra={"MYSISTERDB_API_TOKENS": PEOPLE,
                                             "MYSISTERDB_OPERATOR_TOKEN_FILE": str(operator_file),
                                             **(extra or {})})


@pytest.fixture(scope="module")
def replicas(redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    log_dir = tmp_path_factory.mktemp("sessions")
    env = api_env(redis_server, log_dir, db=SESSIONS_DB)
    first, first_url = start_api(env, log_dir=log_dir, name="api-1")
    second_env = {**env, "MYSISTERDB_PORT": str(free_port())}
    try:
        second, second_url = start_api(second_env, log_dir=log_dir, name="api-2")
    except BaseException:
        first.stop()
        raise
    yield Replicas(first=first_url, second=second_url, procs=[first, second], env=env)
    first.stop()
    second.stop()


def sign_in(url: str, token: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/session", json={"token": token}, headers={"Origin": url},
                   timeout=5)
    assert r.status_code == 204, r.text
    name, _, value = r.headers["set-cookie"].split(";")[0].partition("=")
    return {name: value}


def who(url: str, cookies: dict[str, str]) -> int:
    return httpx.get(f"{url}/api/conversations", cookies=cookies, timeout=5).status_code


def delete(url: str, path: str, cookies: dict[str, str]) -> httpx.Response:
    return httpx.delete(f"{url}{path}", cookies=cookies, headers={"Origin": url}, timeout=5)


def test_a_sign_in_link_is_previewed_without_a_session(replicas: Replicas) -> None:
    url = replicas.first
    seen = httpx.post(f"{url}/api/session/preview", json={"token": ALICE},
                      headers={"Origin": url}, timeout=5)
    assert seen.status_code == 200 and seen.json() == {"person": "alice"}
    assert "set-cookie" not in seen.headers  # asking whose token it is signs nobody in
    wrong = httpx.post(f"{url}/api/session/preview", json={"token": ALICE + "x"},
                       headers={"Origin": url}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    page = httpx.get(f"{url}/signin", timeout=5)
    assert 'id="decline"' in page.text and "/signin/script.js" in page.text


def test_signing_out_ends_the_session_on_every_api_process(replicas: Replicas) -> None:
    kept = sign_in(replicas.first, ALICE)
    ended = sign_in(replicas.first, ALICE)
    assert who(replicas.first, ended) == 200 and who(replicas.second, ended) == 200
    out = delete(replicas.first, "/api/session", ended)
    assert out.status_code == 204 and "max-age=0" in out.headers["set-cookie"].lower()
    # The browser forgets the cookie; someone who copied it cannot use it either.
    assert who(replicas.first, ended) == 401 and who(replicas.second, ended) == 401
    assert httpx.get(f"{replicas.second}/api/session", cookies=ended,
                     timeout=5).status_code == 401
    assert who(replicas.second, kept) == 200  # only that session ended


def test_signing_out_everywhere_ends_every_session_of_the_person(replicas: Replicas) -> None:
    phone, laptop = sign_in(replicas.first, ALICE), sign_in(replicas.second, ALICE)
    others = sign_in(replicas.first, DOTTED)
    assert delete(replicas.second, "/api/sessions", laptop).status_code == 204
    for url in (replicas.first, replicas.second):
        assert who(url, phone) == 401 and who(url, laptop) == 401
        assert who(url, others) == 200  # another person's sessions go on
    assert httpx.get(f"{replicas.first}/api/conversations", timeout=5,
                     headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200
    again = sign_in(replicas.first, ALICE)
    assert who(replicas.second, again) == 200
    assert delete(replicas.first, "/api/sessions", {}).status_code == 401  # nobody to end


def test_a_name_with_a_dot_stays_signed_in(replicas: Replicas) -> None:
    cookies = sign_in(replicas.first, DOTTED)
    assert who(replicas.second, cookies) == 200
    me = httpx.get(f"{replicas.second}/api/session", cookies=cookies, timeout=5).json()
    assert me["person"] == "bob.smith"


def test_a_cookie_of_the_first_format_is_refused_cleanly(replicas: Replicas) -> None:
    # v1: "v1.{name}.{expires}.{HMAC keyed by the token}", which nothing can sign out.
    expires = int(time.time()) + 3600
    mac = hmac.new(ALICE.encode(), f"session|alice|{expires}".encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")
    old = {"msdb_session": f"v1.alice.{expires}.{signature}"}
    assert who(replicas.first, old) == 401
    assert httpx.get(f"{replicas.first}/", cookies=old, timeout=5).status_code == 303


def test_the_operator_token_comes_from_its_file(replicas: Replicas) -> None:
    r = httpx.get(f"{replicas.first}/api/queue", timeout=5,
                  headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 200, r.text


def test_a_cookie_is_not_honoured_while_redis_cannot_say_it_was_signed_out(
        replicas: Replicas, tmp_path: Path) -> None:
    cookies = sign_in(replicas.first, ALICE)  # valid: same tokens, another process
    env = {**replicas.env, "MYSISTERDB_PORT": str(free_port()),
           "MYSISTERDB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens
    proc, url = start_api(env, log_dir=tmp_path, name="api-no-redis")
    try:
        listed = httpx.get(f"{url}/api/conversations", cookies=cookies, timeout=10)
        assert listed.status_code == 503
        assert listed.json()["error"]["code"] == "store_unavailable"
        assert httpx.get(f"{url}/api/session", cookies=cookies, timeout=10).status_code == 503
        # What needs no caller still answers with the cookie present.
        assert httpx.get(f"{url}/api/current-time", cookies=cookies,
                         timeout=10).status_code == 200
        assert httpx.get(f"{url}/signin", cookies=cookies, timeout=10).status_code == 200
    finally:
        proc.stop()


# -- failed sign-ins ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def throttled(redis_server: RedisServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    log_dir = tmp_path_factory.mktemp("throttled")
    env = api_env(redis_server, log_dir, db=THROTTLE_DB, extra={
        "MYSISTERDB_SIGNIN_FAILURES_PER_ADDRESS": f"{PER_ADDRESS}/minute",
        "MYSISTERDB_SIGNIN_FAILURES_TOTAL": f"{TOTAL}/minute"})
    proc, url = start_api(env, log_dir=log_dir)
    yield url, proc
    proc.stop()


def client_from(address: str) -> httpx.Client:
    """A client whose connections come from `address` (any of 127/8 is loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=5)


def test_failed_sign_ins_are_throttled_per_address_and_in_all(
        throttled: tuple[str, Proc]) -> None:
    url, proc = throttled
    own = {"Origin": url}
    with client_from("127.0.0.1") as one, client_from("127.0.0.2") as two, \
            client_from("127.0.0.3") as three:
        def attempt(client: httpx.Client, token: str,
                    path: str = "/api/session") -> httpx.Response:
            return client.post(f"{url}{path}", json={"token": token}, headers=own)

        tries = [attempt(one, ALICE + "x", path) for path in
                 ("/api/session", "/api/session/preview", "/api/session")]
        assert [r.status_code for r in tries] == [401] * PER_ADDRESS
        # Past the limit even the right token is refused: guessing gains nothing.
        for path in ("/api/session", "/api/session/preview"):
            refused = attempt(one, ALICE, path)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_sign_ins"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        form = one.post(f"{url}/signin", data={"token": ALICE, "next": "/"}, headers=own)
        assert form.status_code == 429 and "秒ほど待って" in form.text
        assert "set-cookie" not in form.headers
        # Bearer tokens and sessions are not sign-ins: they keep working.
        assert one.get(f"{url}/api/conversations",
                       headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200
        # Another address may still try, until everyone's failures reach the total.
        assert attempt(two, ALICE).status_code == 204
        assert [attempt(two, ALICE + "x").status_code
                for _ in range(TOTAL - PER_ADDRESS)] == [401] * (TOTAL - PER_ADDRESS)
        overall = attempt(three, ALICE)
        assert overall.status_code == 429, overall.text
    # Eight refusals, one log line: an attack cannot flood the log.
    lines = [line for line in proc.log().splitlines() if "sign-in refused" in line]
    assert len(lines) == 1, lines
