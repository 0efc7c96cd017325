"""MYSISTERDB_REDIS_SENTINELS and _MASTER: the one URL they make, the clients and the broker
built from it. Pure (tests/api/test_redis_sentinel.py runs a stack through a failover)."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import SentinelManagedSSLConnection

from core import redis_sentinel
from core.redis_client import connect
from core.settings import Settings
from taskqueue.app import KOMBU_SENTINEL_TRANSPORT, create_celery
from taskqueue.kombu_redis import SentinelChannel

PASSWORD = "p@ss/word"  # characters a URL must escape


def test_the_settings_make_one_sentinel_url() -> None:
    settings = Settings(redis_sentinels="s1:26379, s2:26380,s3", redis_master="chat",
                        redis_password=PASSWORD)
    assert settings.redis_url == ("redis+sentinel://:p%40ss%2Fword@s1:26379,s2:26380,s3:26379"
                                  "/0?master=chat")
    found = redis_sentinel.target(settings.redis_url)
    assert found.sentinels == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert (found.master, found.password, found.db, found.secure) == ("chat", PASSWORD, 0, False)
    # The log scrubber knows it as written and as the URL escapes it.
    assert {PASSWORD, "p%40ss%2Fword"} <= set(settings.secret_values())


def test_the_url_gives_scheme_database_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = Settings(redis_url="rediss://:pw@ignored:6380/3", redis_tls_ca_file=ca,
                        redis_sentinels="10.0.0.1:26379,10.0.0.2:26379")
    found = redis_sentinel.target(settings.redis_url or "")
    assert found.secure and found.db == 3 and found.master == "mymaster"
    assert found.tls == {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca)}
    # The primary's connections and the Sentinels' both speak TLS; the password is the data's.
    assert found.sentinel_kwargs(1.0)["ssl_ca_certs"] == str(ca)
    assert "password" not in found.sentinel_kwargs(1.0)
    client = connect(settings.redis_url, timeout_s=1.0)
    assert client.connection_pool.connection_class is SentinelManagedSSLConnection
    assert client.connection_pool.connection_kwargs["password"] == "pw"
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 1.0
    # Celery's broker: kombu's sentinel:// form, our transport with the closing fix, TLS.
    app = create_celery(settings)
    assert app.conf.broker_transport == KOMBU_SENTINEL_TRANSPORT
    assert app.conf.broker_url == ("sentinel://:pw@10.0.0.1:26379/3;"
                                   "sentinel://:pw@10.0.0.2:26379/3")
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["ssl"] is True
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("sentinels", "says"), [(" , ", "no host:port"), (":26379", "not host:port")])
def test_sentinel_mistakes_are_said(sentinels: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Settings(redis_sentinels=sentinels)


def test_a_plain_url_stays_plain() -> None:
    assert not redis_sentinel.is_sentinel(Settings(redis_url="redis://h:6379/0").redis_url)
    assert not redis_sentinel.is_sentinel(None)


def test_the_sentinel_channel_has_the_closing_fix() -> None:
    """kombu's SentinelChannel builds its pool from _connparams too: closed, that is a
    connection error (Celery ignores it while closing) and not an AttributeError."""
    detached = SimpleNamespace(client=None)
    ours = SentinelChannel.__new__(SentinelChannel)
    ours.connection = detached
    with pytest.raises(RedisConnectionError):
        ours._connparams()
    stock = kombu_redis.SentinelChannel.__new__(kombu_redis.SentinelChannel)
    stock.connection = detached
    with pytest.raises(AttributeError):  # the defect, still in kombu 5.7
        stock._connparams()
