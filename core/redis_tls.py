"""Redis over TLS (rediss://), and the one warning about a Redis reached without it.

Every process connects with settings.redis_url, into which core/settings.py puts the
password and, for a rediss:// URL, the TLS options as query parameters (`with_tls`). The
URL is the one thing every client reads: redis-py's sync and asyncio clients, kombu (Celery's
broker: its parse_url turns ssl_* into Connection(ssl=...)), `celery inspect` in the compose
healthchecks and Flower. So no client of ours can be built without them, and a rediss:// URL
never falls back to kombu's default for one without options, which is *no* verification.

Imports no settings: core/settings.py uses it.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from core import redis_sentinel
from core.redis_client import connect

logger = logging.getLogger(__name__)

CA_ENV = "MYSISTERDB_REDIS_TLS_CA_FILE"
START_CHECK_TIMEOUT_S = 2.0
CLOSED_BY_SERVER = "Connection closed by server"  # redis-py's words for an EOF on a read
# redis-py's and kombu's names for the verification levels (both read these strings).
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def with_tls(url: str, *, ca_file: Path | None, cert_file: Path | None,
             key_file: Path | None) -> str:
    """`url` with its TLS options: the server's certificate verified (unless the URL itself
    says otherwise), against `ca_file` when given (else the system's CAs), and a client
    certificate when the server asks for one. A plaintext URL is returned as it is, unless a
    TLS file was set for it: that is a mistake worth stopping for."""
    parts = urlsplit(url)
    given = {"MYSISTERDB_REDIS_TLS_CA_FILE": ca_file, "MYSISTERDB_REDIS_TLS_CERT_FILE": cert_file,
             "MYSISTERDB_REDIS_TLS_KEY_FILE": key_file}
    if parts.scheme != "rediss":
        named = [name for name, value in given.items() if value is not None]
        if named:
            raise ValueError(f"{', '.join(named)} set, but MYSISTERDB_REDIS_URL is not "
                             "rediss://: TLS needs a rediss:// URL (and a server with TLS)")
        return url
    if (cert_file is None) != (key_file is None):
        raise ValueError("set MYSISTERDB_REDIS_TLS_CERT_FILE and MYSISTERDB_REDIS_TLS_KEY_FILE "
                         "together (the client certificate and its key)")
    for name, path in given.items():
        if path is not None and not path.is_file():
            raise ValueError(f"{name}: {path} is not a readable file")
    query = dict(parse_qsl(parts.query))
    query.setdefault("ssl_cert_reqs", "required")
    if query["ssl_cert_reqs"].lower() not in CERT_REQS:
        raise ValueError(f"MYSISTERDB_REDIS_URL: ssl_cert_reqs must be one of {sorted(CERT_REQS)}")
    for key, path in (("ssl_ca_certs", ca_file), ("ssl_certfile", cert_file),
                      ("ssl_keyfile", key_file)):
        if path is not None:
            query[key] = str(path.resolve())
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def broker_ssl_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a rediss:// URL as Celery's broker_use_ssl: the same the URL's query
    gives kombu, set on the app too, so that what rebuilds a connection from the app's
    configuration and `as_uri()` (which drops the query) keeps them."""
    parts = urlsplit(url)
    if parts.scheme not in ("rediss", "rediss+sentinel"):
        return None
    options: dict[str, Any] = {k: v for k, v in parse_qsl(parts.query) if k.startswith("ssl_")}
    options["ssl_cert_reqs"] = CERT_REQS[str(options.get("ssl_cert_reqs", "required")).lower()]
    return options


def is_loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may be anywhere
        return False


def plaintext_warning(url: str | None) -> str | None:
    """What to say about a plaintext Redis off this machine, or None. Host and port only:
    never the URL, which carries the password."""
    if not url:
        return None  # `mysisterdb up`'s private server, on loopback
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":  # the Sentinels name the primary: judge them
        far = [f"{h}:{p}" for h, p in redis_sentinel.target(url).sentinels if not is_loopback(h)]
        where_ = ",".join(far)
    elif parts.scheme == "redis":
        far = [] if is_loopback(parts.hostname) else [f"{parts.hostname}:{parts.port or 6379}"]
        where_ = ",".join(far)
    else:
        return None
    if not far:
        return None
    return (f"Redis at {where_} is plaintext (redis://) on an "
            "address that is not loopback: its password, prompts and replies cross the "
            f"network readable. Use rediss:// with {CA_ENV} (README, \"Workers on another "
            "host\"), or set MYSISTERDB_REDIS_PLAINTEXT_OK=true where that network is this "
            "host's own (compose)")


def where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


def tls_failure(url: str, exc: BaseException) -> str | None:
    """A clear sentence for a TLS failure of a rediss:// connection, or None if it was not
    one (Redis down, a wrong password: said elsewhere)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ssl.SSLError):
        seen = seen.__cause__ or seen.__context__
    if isinstance(seen, ssl.SSLCertVerificationError):
        ca = dict(parse_qsl(urlsplit(url).query)).get("ssl_ca_certs", "the system's CAs")
        return (f"Redis at {where(url)} refused: its certificate is not trusted "
                f"({seen.verify_message or seen.reason}); {CA_ENV} must name the CA that signed "
                f"it (now: {ca}), and the URL's host must be one the certificate names")
    # With TLS 1.3 the client's side of the handshake ends before the server has judged our
    # certificate: a server that wants one we did not give closes at the first command.
    if seen is not None or CLOSED_BY_SERVER in str(exc):
        detail = f"{seen.reason or seen}" if seen is not None else "closed at the first command"
        return (f"Redis at {where(url)} refused us over TLS ({detail}): if it asks for a client "
                "certificate (tls-auth-clients), MYSISTERDB_REDIS_TLS_CERT_FILE and "
                "MYSISTERDB_REDIS_TLS_KEY_FILE must give one its CA signed; and the URL's port "
                "must be its tls-port")
    return None


def check_at_start(url: str | None, *, plaintext_ok: bool,
                   timeout_s: float = START_CHECK_TIMEOUT_S) -> None:
    """At a process's start (API, worker): one warning for a plaintext Redis off this host;
    for rediss://, one PING, so that a certificate nobody vouches for is said at once, in
    words, rather than only as each request's 503 or the broker's endless reconnects."""
    if not plaintext_ok and (warning := plaintext_warning(url)):
        logger.warning(warning)
    if not url or urlsplit(url).scheme != "rediss":
        return
    query = dict(parse_qsl(urlsplit(url).query))
    if query.get("ssl_cert_reqs", "required").lower() != "required":
        logger.warning("Redis at %s: TLS without verifying the server's certificate "
                       "(ssl_cert_reqs=%s in the URL): anyone on the path can pose as it",
                       where(url), query["ssl_cert_reqs"])
    client = connect(url, timeout_s=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        failure = tls_failure(url, exc)
        if failure:
            logger.error(failure)
        else:  # down or busy: the health check and each request say so
            logger.warning("Redis at %s does not answer yet: %s", where(url), type(exc).__name__)
    else:
        logger.info("Redis at %s: TLS (ssl_cert_reqs=%s)", where(url),
                    query.get("ssl_cert_reqs", "required"))
    finally:
        client.close()
