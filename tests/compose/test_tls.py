"""TLS on the scaled stack's proxy, for real: docker-compose.tls.yml on top of
docker-compose.scale.yml, as the README's "Expose it safely" starts it, with a certificate
made for this run. What is tested is the proxy's scheme reaching the API: the session cookie
and HSTS over https, none of either over plain http.

The stack is the one tests/compose/scaled_stack.py brings up once for this module,
test_scaled.py and test_redis_tls.py (Redis over TLS and Flower are on too, and do not change
what the proxy passes on). Tokens mode: the sign-ins are the person "tls"'s.
"""

from __future__ import annotations

import httpx
import pytest

from tests.compose.scaled_stack import Scaled, token
from tests.compose.test_stack import UP_TIMEOUT_S

HSTS = "max-age=31536000"
PERSON = "tls"

pytestmark = pytest.mark.timeout(UP_TIMEOUT_S + 600)


def sign_in(scaled: Scaled, url: str, **headers: str) -> httpx.Response:
    # A client of its own each time: no cookie of an earlier answer is carried along.
    with httpx.Client(verify=scaled.trust, timeout=10) as client:
        r = client.post(f"{url}/api/session", json={"token": token(PERSON)}, headers=headers)
    assert r.status_code == 204, (r.status_code, r.text)
    return r


def cookie_parts(r: httpx.Response) -> tuple[str, dict[str, str]]:
    """The one Set-Cookie of a sign-in: (name, {attribute lowercased: value})."""
    [header] = r.headers.get_list("set-cookie")
    first, *rest = (part.strip() for part in header.split(";"))
    attributes = {}
    for part in rest:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return first.split("=", 1)[0], attributes


def test_a_sign_in_over_https_gets_a_host_only_secure_cookie_and_hsts(scaled: Scaled) -> None:
    r = sign_in(scaled, scaled.https_url)
    name, attributes = cookie_parts(r)
    assert name == "__Host-msdb_session", r.headers.get_list("set-cookie")
    assert "secure" in attributes and "httponly" in attributes, attributes
    assert attributes["path"] == "/" and attributes["samesite"].lower() == "strict"
    assert "domain" not in attributes, attributes
    assert r.headers.get("strict-transport-security") == HSTS, dict(r.headers)
    # The cookie signs its holder in over https.
    cookie = r.headers["set-cookie"].split(";", 1)[0]
    with httpx.Client(verify=scaled.trust, timeout=10) as client:
        me = client.get(f"{scaled.https_url}/api/session", headers={"Cookie": cookie})
    assert me.status_code == 200 and me.json()["person"] == PERSON, me.text


def test_a_browser_on_the_https_port_is_its_own_origin(scaled: Scaled) -> None:
    # A page served from https://127.0.0.1:<port> posts with that Origin: the API, seeing
    # the Host nginx passes on, must take it for its own and not refuse it as cross-site.
    r = sign_in(scaled, scaled.https_url, Origin=scaled.https_url)
    assert cookie_parts(r)[0] == "__Host-msdb_session"


def test_plain_http_stays_plain_and_cannot_pass_for_https(scaled: Scaled) -> None:
    # nginx overwrites a client's own X-Forwarded-Proto; a page on the http port is its own
    # origin there too.
    for headers in ({}, {"X-Forwarded-Proto": "https"}, {"Origin": scaled.url}):
        r = sign_in(scaled, scaled.url, **headers)
        name, attributes = cookie_parts(r)
        assert name == "msdb_session", (headers, r.headers.get_list("set-cookie"))
        assert "secure" not in attributes, (headers, attributes)
        assert "strict-transport-security" not in r.headers, (headers, dict(r.headers))
