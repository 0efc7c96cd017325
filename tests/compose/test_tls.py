"""The scaled stack with TLS, for real: docker-compose.yml + docker-compose.scale.yml +
docker-compose.tls.yml, as the README's "Expose it safely" starts it, with a throwaway
self-signed certificate made for this run.

One bring-up for the module (one API replica, one chat worker: what is tested is the proxy's
scheme reaching the API, not the replicas).  A project name, image tag and edge subnet of its
own, so that it never stops or retags another module's stack; the image is built from the
same cache, so the build costs seconds once another module has built it.  Generated-token
mode, the token read as the README says (`docker compose exec api mysisterdb token`).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mysisterdb.redis_server import free_port
from tests.compose.test_stack import (
    CHECKOUT_ID,
    COMPOSE_FILE,
    UP_TIMEOUT_S,
    Compose,
    compose_env,
    need_docker,
)
from tests.procs import ROOT

SCALE_FILE = ROOT / "docker-compose.scale.yml"
TLS_FILE = ROOT / "docker-compose.tls.yml"
EDGE_NET = f"10.214.{int(CHECKOUT_ID[:2], 16)}"
HSTS = "max-age=31536000"

pytestmark = pytest.mark.timeout(UP_TIMEOUT_S + 300)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (fullchain.pem, privkey.pem)."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # not in this venv: Debian's openssl
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, timeout=60, check=True)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()),
                           critical=False)
            .sign(private, hashes.SHA256()))
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    # As a real key should be: nginx's master process (root) reads it all the same.
    key.chmod(0o600)
    return cert, key


@dataclass
class Tls:
    stack: Compose
    https_url: str
    http_url: str
    trust: ssl.SSLContext  # trusts the generated certificate only

    def sign_in(self, url: str, **headers: str) -> httpx.Response:
        # A client of its own each time: no cookie of an earlier answer is carried along.
        with httpx.Client(verify=self.trust, timeout=10) as client:
            r = client.post(f"{url}/api/session", json={"token": self.stack.token},
                            headers=headers)
        assert r.status_code == 204, (r.status_code, r.text)
        return r


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    need_docker()
    folder = tmp_path_factory.mktemp("tls")
    env_file = folder / "empty.env"
    env_file.write_text("")
    cert, key = make_certificate(folder)
    proxy_port, tls_port = free_port(), free_port()
    env = {**compose_env(free_port(), free_port()),
           "MYSISTERDB_IMAGE_TAG": f"test-{CHECKOUT_ID}-tls",
           "MYSISTERDB_PROXY_HOST_PORT": str(proxy_port), "MYSISTERDB_EDGE_NET": EDGE_NET,
           "MYSISTERDB_TLS_HOST_PORT": str(tls_port),
           "MYSISTERDB_TLS_CERT_FILE": str(cert), "MYSISTERDB_TLS_KEY_FILE": str(key)}
    stack = Compose(project=f"mysisterdb-tls-test-{CHECKOUT_ID}", env=env, env_file=env_file,
                    api_url=f"http://127.0.0.1:{proxy_port}",
                    files=(COMPOSE_FILE, SCALE_FILE, TLS_FILE))
    try:
        stack.run("down", "-v", "--remove-orphans")
        stack.run("up", "-d", "--build", "--wait", "--scale", "api=1", "--scale", "worker=1",
                  timeout_s=UP_TIMEOUT_S)
        stack.token = stack.run("exec", "-T", "api", "mysisterdb", "token").stdout.strip()
        yield Tls(stack, https_url=f"https://127.0.0.1:{tls_port}",
                  http_url=f"http://127.0.0.1:{proxy_port}",
                  trust=ssl.create_default_context(cafile=str(cert)))
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)


def cookie_parts(r: httpx.Response) -> tuple[str, dict[str, str]]:
    """The one Set-Cookie of a sign-in: (name, {attribute lowercased: value})."""
    [header] = r.headers.get_list("set-cookie")
    first, *rest = (part.strip() for part in header.split(";"))
    attributes = {}
    for part in rest:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return first.split("=", 1)[0], attributes


def test_a_sign_in_over_https_gets_a_host_only_secure_cookie_and_hsts(tls: Tls) -> None:
    r = tls.sign_in(tls.https_url)
    name, attributes = cookie_parts(r)
    assert name == "__Host-msdb_session", r.headers.get_list("set-cookie")
    assert "secure" in attributes and "httponly" in attributes, attributes
    assert attributes["path"] == "/" and attributes["samesite"].lower() == "strict"
    assert "domain" not in attributes, attributes
    assert r.headers.get("strict-transport-security") == HSTS, dict(r.headers)
    # The cookie signs its holder in over https.
    cookie = r.headers["set-cookie"].split(";", 1)[0]
    with httpx.Client(verify=tls.trust, timeout=10) as client:
        me = client.get(f"{tls.https_url}/api/session", headers={"Cookie": cookie})
    assert me.status_code == 200 and me.json()["person"] == "owner", me.text


def test_a_browser_on_the_https_port_is_its_own_origin(tls: Tls) -> None:
    # A page served from https://127.0.0.1:<port> posts with that Origin: the API, seeing
    # the Host nginx passes on, must take it for its own and not refuse it as cross-site.
    r = tls.sign_in(tls.https_url, Origin=tls.https_url)
    assert cookie_parts(r)[0] == "__Host-msdb_session"


def test_plain_http_stays_plain_and_cannot_pass_for_https(tls: Tls) -> None:
    # nginx overwrites a client's own X-Forwarded-Proto; a page on the http port is its own
    # origin there too.
    for headers in ({}, {"X-Forwarded-Proto": "https"}, {"Origin": tls.http_url}):
        r = tls.sign_in(tls.http_url, **headers)
        name, attributes = cookie_parts(r)
        assert name == "msdb_session", (headers, r.headers.get_list("set-cookie"))
        assert "secure" not in attributes, (headers, attributes)
        assert "strict-transport-security" not in r.headers, (headers, dict(r.headers))
