"""Static checks of docker-compose.scale.yml and deploy/nginx.conf against the code they
front (no Docker engine needed; the scaled stack runs for real in test_scaled.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
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
