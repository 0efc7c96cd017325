"""Redis behind Sentinel: the clients find the primary by asking the Sentinels, and find the
new one after a failover.

MYSISTERDB_REDIS_SENTINELS=host:port,… and MYSISTERDB_REDIS_MASTER make core/settings.py
turn MYSISTERDB_REDIS_URL (its scheme, password, database and TLS query; its host is not
used) into one URL of our own,

    redis+sentinel://:PASSWORD@s1:26379,s2:26379,s3:26379/0?master=mymaster[&ssl_…]
    (rediss+sentinel://… with TLS, to the Sentinels and to Redis alike)

which every process reads as it reads a plain URL: core/redis_client.connect and
`async_client` here build Sentinel-managed clients from it, taskqueue/app.py turns it into
kombu's sentinel:// broker URL. A connection to a primary that was demoted fails (redis-py's
SentinelManagedConnection turns READONLY into a connection error) and the next one asks the
Sentinels again.

Imports no settings: core/settings.py uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: dict[str, str] = field(default_factory=dict)  # ssl_* of the URL's query
    secure: bool = False

    def connection_kwargs(self, timeout_s: float) -> dict[str, Any]:
        """For the primary's connections (and the Sentinels', minus the password)."""
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s,
                                  "socket_connect_timeout": timeout_s, "db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.secure:
            kwargs["ssl"] = True
            kwargs.update(self.tls)
        return kwargs

    def sentinel_kwargs(self, timeout_s: float, *, asynchronous: bool = False) -> dict[str, Any]:
        # Sentinels have no password here (they hold none of the data), but speak TLS when
        # Redis does. Each is asked once per discovery: redis-py's default retry for the
        # client it builds per Sentinel (10 retries, timeouts included) made a discovery
        # behind frozen Sentinels wait a minute (tests/core/test_sentinels_down.py); the
        # discovery itself is retried with the primary's connection.
        kwargs: dict[str, Any] = {
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
            "retry": AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)}
        if self.secure:
            kwargs["ssl"] = True
            kwargs.update(self.tls)
        return kwargs


def is_sentinel(url: str | None) -> bool:
    return bool(url) and urlsplit(url or "").scheme in SCHEMES


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """"s1:26379,s2,[::1]:26380" -> [(host, port), …]; a mistake is said with its entry."""
    found = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":") if entry.rpartition(":")[2].isdigit() else (
            entry, "", str(DEFAULT_SENTINEL_PORT))
        host = host.strip("[]")
        if not host:
            raise ValueError(f"MYSISTERDB_REDIS_SENTINELS: {entry!r} is not host:port")
        found.append((host, int(port)))
    if not found:
        raise ValueError("MYSISTERDB_REDIS_SENTINELS: no host:port in it")
    return found


def sentinel_url(url: str, *, sentinels: str, master: str) -> str:
    """MYSISTERDB_REDIS_URL (scheme, password, database, TLS query) and the Sentinels as one
    URL (the module's docstring)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("with MYSISTERDB_REDIS_SENTINELS, MYSISTERDB_REDIS_URL must be "
                         "redis:// or rediss:// (its password, database and TLS are used)")
    if not master:
        raise ValueError("MYSISTERDB_REDIS_MASTER: the name the Sentinels monitor, not empty")
    auth = ""
    if parts.password or parts.username:
        auth = f"{quote(unquote(parts.username or ''), safe='')}:" \
               f"{quote(unquote(parts.password or ''), safe='')}@"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parse_sentinels(sentinels))
    query = [("master", master), *parse_qsl(parts.query)]
    return (f"{parts.scheme}+sentinel://{auth}{hosts}{parts.path or '/0'}"
            f"?{urlencode(query, safe='/')}")


def target(url: str) -> SentinelTarget:
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    path, _, query_text = tail.partition("?")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    query = dict(parse_qsl(query_text))
    master = query.pop("master", "")
    return SentinelTarget(
        sentinels=parse_sentinels(unquote(hosts)), master=master,
        db=int(path or 0), username=unquote(username) or None,
        password=unquote(password) or None,
        tls={k: v for k, v in query.items() if k.startswith("ssl_")},
        secure=SCHEMES[scheme] == "rediss")


def client(url: str, *, timeout_s: float, retry: Any = None,
           health_check_interval: int = 10) -> redis.Redis:
    """A client of the current primary (core/redis_client.connect's for a Sentinel URL)."""
    found = target(url)
    sentinel = Sentinel(found.sentinels, sentinel_kwargs=found.sentinel_kwargs(timeout_s),
                        **found.connection_kwargs(timeout_s))
    return sentinel.master_for(found.master, retry=retry,
                               health_check_interval=health_check_interval)


def async_client(url: str, *, timeout_s: float, **extra: Any) -> aredis.Redis:
    """The asyncio client of the current primary (the API's store monitor and job watcher)."""
    found = target(url)
    sentinel = AsyncSentinel(found.sentinels,
                             sentinel_kwargs=found.sentinel_kwargs(timeout_s, asynchronous=True),
                             **found.connection_kwargs(timeout_s))
    return sentinel.master_for(found.master, **extra)


def broker(url: str, *, timeout_s: float) -> tuple[str, dict[str, Any]]:
    """kombu's form: sentinel://… for each Sentinel, `;`-joined, and its transport options."""
    found = target(url)
    auth = ""
    if found.password:
        auth = f"{quote(found.username or '', safe='')}:{quote(found.password, safe='')}@"
    urls = ";".join(f"sentinel://{auth}{f'[{h}]' if ':' in h else h}:{p}/{found.db}"
                    for h, p in found.sentinels)
    return urls, {"master_name": found.master,
                  "sentinel_kwargs": found.sentinel_kwargs(timeout_s)}
