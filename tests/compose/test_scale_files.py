"""Static checks of docker-compose.scale.yml and deploy/nginx.conf against the code they
front (no Docker engine needed; the scaled stack runs for real in test_scaled.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.schemas import MAX_WAIT_S
from core.settings import Settings
from tests.procs import ROOT

SCALE_FILE = ROOT / "docker-compose.scale.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


class ComposeLoader(yaml.SafeLoader):
    """Compose's `!reset` (drop what the base file set) read as the value it resets to."""


ComposeLoader.add_constructor(
    "!reset", lambda loader, node: loader.construct_sequence(node)
    if isinstance(node, yaml.SequenceNode) else None)
SCALE: dict[str, Any] = yaml.load(SCALE_FILE.read_text(encoding="utf-8"), ComposeLoader)  # noqa: S506
CONF = NGINX_CONF.read_text(encoding="utf-8")


def directives(text: str) -> list[str]:
    """The directives of an nginx block (comments dropped), each without its `;`."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [d.strip() for d in " ".join(lines).split(";") if d.strip()]


def location(prefix: str) -> list[str]:
    m = re.search(r"location " + re.escape(prefix) + r" \{(?P<body>[^}]*)\}", CONF)
    assert m, f"no `location {prefix}` in {NGINX_CONF}"
    return directives(m.group("body"))


def seconds(values: list[str], name: str) -> float:
    found = [d.split()[1] for d in values if d.split()[0] == name]
    assert found, name
    return float(found[-1].rstrip("s"))


SERVER = directives(re.sub(r"location [^{]*\{[^}]*\}", "", CONF))


def test_only_the_proxy_is_published_and_the_api_trusts_only_it() -> None:
    services = SCALE["services"]
    assert services["api"]["ports"] == [], "replicas cannot share a host port"
    assert any("127.0.0.1:" in p for p in services["proxy"]["ports"])
    proxy_ip = services["proxy"]["networks"]["edge"]["ipv4_address"]
    trusted = services["api"]["environment"]["MYSISTERDB_FORWARDED_ALLOW_IPS"]
    assert trusted == proxy_ip, (trusted, proxy_ip)
    subnet = SCALE["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert subnet.removesuffix(".0/24") == proxy_ip.removesuffix(".10")


def test_event_streams_and_long_polls_pass_unbuffered_and_outlast_their_waits() -> None:
    events = location("~ ^/api/jobs/[^/]+/events$")
    polls = location("/api/jobs/")
    for block in (events, polls):
        assert "proxy_buffering off" in block
    assert seconds(events, "proxy_read_timeout") > Settings().sse_max_s
    assert seconds(polls, "proxy_read_timeout") > MAX_WAIT_S + Settings().request_timeout
    assert seconds(SERVER, "proxy_read_timeout") > Settings().import_timeout_s


def test_a_failed_replica_is_retried_for_idempotent_requests_only() -> None:
    retry = next(d for d in SERVER if d.startswith("proxy_next_upstream "))
    assert retry.split()[1:] == ["error", "timeout", "http_502", "http_503"]
    assert "non_idempotent" not in CONF.split("proxy_next_upstream", 1)[1].split(";")[0]


def test_replicas_are_found_through_dockers_resolver() -> None:
    assert any(d.startswith("resolver 127.0.0.11") for d in SERVER)
    # A literal name would be resolved once at start: the upstream must be a variable.
    assert "set $api http://api:8000" in SERVER
    for block in (location("/"), location("/api/jobs/")):
        assert "proxy_pass $api" in block
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "Host"):
        assert any(d.startswith(f"proxy_set_header {header} ") for d in SERVER), header
    assert "add_header X-Upstream $upstream_addr always" in SERVER


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_the_merged_files_publish_no_api_port() -> None:
    done = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-f",
                           str(SCALE_FILE), "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip("no Compose v2")
    assert done.returncode == 0, done.stderr
    merged = yaml.safe_load(done.stdout)["services"]
    assert not merged["api"].get("ports"), merged["api"].get("ports")
    assert merged["proxy"]["ports"][0]["published"] == "8080"


# -- docker-compose.tls.yml + deploy/nginx-tls.conf (run for real in test_tls.py) -----------

TLS_FILE = ROOT / "docker-compose.tls.yml"
TLS_CONF = ROOT / "deploy" / "nginx-tls.conf"
TLS: dict[str, Any] = yaml.safe_load(TLS_FILE.read_text(encoding="utf-8"))


def test_the_tls_listener_shares_the_server_that_forwards_its_scheme() -> None:
    # nginx.conf's one server includes the snippet's directory, and the snippet is mounted
    # there: the TLS listener gets the same locations, and $scheme (https on it) as the
    # X-Forwarded-Proto the API believes.
    mounts = {v["target"]: v for v in TLS["services"]["proxy"]["volumes"] if isinstance(v, dict)}
    short = [v for v in TLS["services"]["proxy"]["volumes"] if isinstance(v, str)]
    [snippet] = [v for v in short if v.startswith("./deploy/nginx-tls.conf:")]
    target, mode = snippet.split(":")[1:]
    assert mode == "ro"
    include = next(d for d in SERVER if d.startswith("include "))
    assert Path(target).parent == Path(include.split()[1]).parent, (target, include)
    assert Path(target).match(Path(include.split()[1]).name)
    assert "proxy_set_header X-Forwarded-Proto $scheme" in SERVER
    # The port too: a browser's Origin on :8443 is compared with the Host the API sees.
    assert "proxy_set_header Host $http_host" in SERVER
    tls = directives(TLS_CONF.read_text(encoding="utf-8"))
    assert "listen 8443 ssl" in tls
    published = [p for p in TLS["services"]["proxy"]["ports"] if p.endswith(":8443")]
    assert published == ["${MYSISTERDB_TLS_HOST_IP:-127.0.0.1}:${MYSISTERDB_TLS_HOST_PORT:-8443}:8443"]
    # The certificate and key nginx reads are the mounted host files.
    files = {d.split()[0]: d.split()[1] for d in tls if d.startswith("ssl_certificate")}
    assert set(files) == {"ssl_certificate", "ssl_certificate_key"}
    assert set(files.values()) <= set(mounts), (files, list(mounts))
    assert not any(d.startswith("ssl_protocols") and ("TLSv1 " in d + " " or "TLSv1.1" in d)
                   for d in tls)


def test_the_certificate_and_key_are_host_files_mounted_read_only() -> None:
    proxy = TLS["services"]["proxy"]
    assert "build" not in proxy and "build" not in SCALE["services"]["proxy"]
    mounts = [v for v in proxy["volumes"] if isinstance(v, dict)]
    assert {m["target"] for m in mounts} == {"/etc/nginx/tls/fullchain.pem",
                                             "/etc/nginx/tls/privkey.pem"}
    for m in mounts:
        assert m["type"] == "bind" and m["read_only"] is True, m
        # A missing file must stop `up`, not become an empty directory Docker creates.
        assert m["bind"]["create_host_path"] is False, m
        assert m["source"].startswith("${MYSISTERDB_TLS_"), m
        assert ":-./secrets/tls/" in m["source"], m
    # Neither our image nor git takes them: secrets/ and *.pem stay out of the build context.
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "secrets" in ignored and "**/*.pem" in ignored


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_the_merged_tls_files_add_the_https_port_to_the_proxy_only() -> None:
    done = subprocess.run(["docker", "compose", *(a for f in (ROOT / "docker-compose.yml",
                                                              SCALE_FILE, TLS_FILE)
                                                  for a in ("-f", str(f))),
                           "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip("no Compose v2")
    assert done.returncode == 0, done.stderr
    merged = yaml.safe_load(done.stdout)["services"]
    assert not merged["api"].get("ports"), merged["api"].get("ports")
    ports = {(p["host_ip"], p["published"], p["target"]) for p in merged["proxy"]["ports"]}
    assert ports == {("127.0.0.1", "8080", 8080), ("127.0.0.1", "8443", 8443)}, ports
    targets = [v["target"] for v in merged["proxy"]["volumes"]]
    assert "/etc/nginx/conf.d/default.conf" in targets  # the scale file's, kept
