"""The TLS options of a rediss:// URL, where they go (the settings' URL, Celery's broker), and
the start warning about a plaintext Redis off this host. Pure: no server (tests/api/
test_redis_tls.py runs the stack over TLS)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from kombu import Connection

from core.redis_tls import broker_ssl_options, check_at_start, plaintext_warning, with_tls
from core.settings import Settings
from taskqueue.app import KOMBU_TRANSPORT, create_celery

PASSWORD = "hunter2-not-in-any-line"


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    return files


def tls_settings(files: dict[str, Path], url: str = "rediss://10.0.0.5:6380/0") -> Settings:
    return Settings(redis_url=url, redis_password=PASSWORD, redis_tls_ca_file=files["ca"],
                    redis_tls_cert_file=files["cert"], redis_tls_key_file=files["key"])


def test_the_settings_url_carries_password_and_tls(pem_files: dict[str, Path]) -> None:
    url = tls_settings(pem_files).redis_url
    assert url == (f"rediss://:{PASSWORD}@10.0.0.5:6380/0?ssl_cert_reqs=required"
                   f"&ssl_ca_certs={pem_files['ca']}&ssl_certfile={pem_files['cert']}"
                   f"&ssl_keyfile={pem_files['key']}")


def test_without_a_ca_the_system_cas_verify(pem_files: dict[str, Path]) -> None:
    url = Settings(redis_url="rediss://redis.example:6380/0").redis_url
    assert url == "rediss://redis.example:6380/0?ssl_cert_reqs=required"
    # An explicit choice in the URL stands (warned about at start, below).
    assert with_tls("rediss://h/0?ssl_cert_reqs=none", ca_file=None, cert_file=None,
                    key_file=None).endswith("?ssl_cert_reqs=none")


def test_plaintext_urls_are_left_alone() -> None:
    assert Settings(redis_url="redis://127.0.0.1:6379/0").redis_url == "redis://127.0.0.1:6379/0"
    assert Settings().redis_url is None  # `up`'s private server


@pytest.mark.parametrize(("env", "url", "says"), [
    ({"redis_tls_ca_file": "ca"}, "redis://10.0.0.5/0", "is not rediss://"),
    ({"redis_tls_ca_file": "ca"}, None, "is not rediss://"),
    ({"redis_tls_cert_file": "cert"}, "rediss://10.0.0.5/0", "together"),
    ({"redis_tls_ca_file": "missing"}, "rediss://10.0.0.5/0", "not a readable file"),
    ({}, "rediss://10.0.0.5/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
])
def test_tls_mistakes_stop_the_start_without_the_password(
        pem_files: dict[str, Path], tmp_path: Path, env: dict[str, str], url: str | None,
        says: str) -> None:
    values = {k: pem_files.get(v, tmp_path / v) for k, v in env.items()}
    # The password in the URL itself: pydantic's error would print the inputs.
    inline = url.replace("://", f"://:{PASSWORD}@") if url else None
    with pytest.raises(ValueError, match=says) as refused:
        Settings(redis_url=inline, **values)  # type: ignore[arg-type]
    assert PASSWORD not in str(refused.value)


def test_the_broker_gets_the_same_options(pem_files: dict[str, Path]) -> None:
    settings = tls_settings(pem_files)
    app = create_celery(settings)
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(pem_files["ca"]),
                "ssl_certfile": str(pem_files["cert"]), "ssl_keyfile": str(pem_files["key"])}
    assert app.conf.broker_use_ssl == expected
    connection: Connection = app.connection_for_write()
    assert connection.ssl == expected  # what kombu's transport hands to redis-py
    assert connection.transport_cls == KOMBU_TRANSPORT  # ours, with its closing fix, over TLS
    # Rebuilt from the URL without its query (as Flower and as_uri() do), it keeps them.
    bare = Connection(f"rediss://:{PASSWORD}@10.0.0.5:6380/0", ssl=app.conf.broker_use_ssl)
    assert bare.ssl == expected


def test_a_plain_broker_has_no_ssl() -> None:
    assert broker_ssl_options("redis://127.0.0.1:6379/0") is None
    assert create_celery(Settings(redis_url="redis://127.0.0.1/0")).conf.broker_use_ssl is None


@pytest.mark.parametrize("url", [
    "redis://:{pw}@10.1.2.3:6379/0", "redis://:{pw}@redis.internal:6379/0",
    "redis://:{pw}@192.168.1.9:6379/0", "redis://:{pw}@[2001:db8::1]:6379/0",
    "redis+sentinel://:{pw}@127.0.0.1:26379,10.1.2.3:26379/0?master=m"])
def test_plaintext_off_this_host_is_warned_without_the_password(url: str) -> None:
    warning = plaintext_warning(url.format(pw=PASSWORD))
    assert warning is not None
    assert "plaintext" in warning and "MYSISTERDB_REDIS_TLS_CA_FILE" in warning
    assert PASSWORD not in warning


@pytest.mark.parametrize("url", [None, "redis://127.0.0.1:6379/0", "redis://localhost/0",
                                 "redis://[::1]:6379/0", "redis://127.0.0.9/0",
                                 "rediss://10.1.2.3:6380/0?ssl_cert_reqs=required",
                                 "redis+sentinel://127.0.0.1:26379,[::1]:26380/0?master=m",
                                 "rediss+sentinel://10.1.2.3:26379/0?master=m",
                                 "unix:///run/redis.sock"])
def test_loopback_and_tls_are_not_warned(url: str | None) -> None:
    assert plaintext_warning(url) is None


def test_the_start_check_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="core.redis_tls"):
        check_at_start(f"redis://:{PASSWORD}@10.1.2.3:6379/0", plaintext_ok=False)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "10.1.2.3:6379" in record.getMessage()
    assert PASSWORD not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="core.redis_tls"):
        check_at_start(f"redis://:{PASSWORD}@10.1.2.3:6379/0", plaintext_ok=True)
    assert caplog.records == []  # compose's own network: said in its file, not each start


def test_a_refused_url_is_not_printed() -> None:
    # pydantic would print the inputs cut in the middle: here "rediss://:...3t@h/0?...", the
    # password's last characters.
    with pytest.raises(ValueError, match="ssl_cert_reqs") as refused:
        Settings(redis_url="rediss://:s3cr3t@h/0?ssl_cert_reqs=x")
    assert "3t@h" not in str(refused.value)
    assert "rediss://" not in str(refused.value)
