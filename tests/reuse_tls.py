"""One TLS context for every default httpx client of the suite.

`httpx.get(...)` builds a client per call, and each client parses certifi's CA bundle into a
new SSL context even for a plain-HTTP URL: 27 ms of CPU for a poll of a loopback server,
against 1.4 ms on a reused client (measured here). The suite polls jobs, health and the
simulator's journal every 50-100 ms while it waits, so this was a large share of its CPU on a
2-core machine. A client asking for anything but the default (a CA file, `verify=False`, a
client certificate) still gets its own context: only the default one is shared, and an SSL
context may be shared by any number of connections and threads."""

from __future__ import annotations

import ssl
from typing import Any

import httpx._transports.default as transports  # where HTTPTransport looks the function up

if not callable(getattr(transports, "create_ssl_context", None)):  # an httpx upgrade moved it
    raise RuntimeError("httpx._transports.default.create_ssl_context is gone: update "
                       "tests/reuse_tls.py for this httpx")
_build = transports.create_ssl_context
_shared: ssl.SSLContext | None = None


def _create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
    global _shared
    if verify is not True or cert is not None or not trust_env:
        return _build(verify=verify, cert=cert, trust_env=trust_env)
    if _shared is None:
        _shared = _build(verify=True, cert=None, trust_env=True)
    return _shared


transports.create_ssl_context = _create_ssl_context
