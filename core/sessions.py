"""The chat page's sessions: a signed cookie that names a session the server can end.

    v2.{name}.{session id}.{issued ms}.{expires}.{signature}

`name` is the person's name in URL-safe base64 (a name may contain `.`, the separator);
the signature is HMAC-SHA256 keyed with the person's own token, so the cookie holds no
token, cannot be forged without one, and changing a person's token ends their sessions.

Signing out writes state to Redis, shared by every API process, so the cookie stops working
at once everywhere:

    msdb:session:{id}:ended                      one session, until it would have expired
    msdb:person:{name}:sessions_ended_before     every session made up to that moment

Every request with a cookie reads both (one MGET). When Redis does not answer, that read
fails and the request is a 503 `store_unavailable` (fail closed): a session that may have
been ended is never honoured. Nothing a session opens works without Redis anyway.
Cookies of the first version (`v1.…`, no id to end) are no longer read: the person signs in
once more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from core import keys
from core.access import Access, Caller

VERSION = "v2"


@dataclass(frozen=True)
class Session:
    person: str
    session_id: str
    issued_ms: int
    expires: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


class Sessions:
    def __init__(self, *, access: Access, client: redis.Redis,
                 clock: Callable[[], float] = time.time) -> None:
        self.access = access
        self.client = client
        self.clock = clock

    def _signature(self, session: Session) -> str | None:
        token = self.access.people.get(session.person)
        if token is None:
            return None
        text = (f"session|{VERSION}|{session.person}|{session.session_id}|"
                f"{session.issued_ms}|{session.expires}")
        return _b64(hmac.new(token.encode(), text.encode(), hashlib.sha256).digest())

    def new(self, person: str) -> str:
        """A new session cookie value for `person` (no Redis write: nothing to end yet)."""
        now = self.clock()
        session = Session(person=person, session_id=secrets.token_urlsafe(16),
                          issued_ms=int(now * 1000), expires=int(now + self.access.session_s))
        signature = self._signature(session)
        if signature is None:
            raise ValueError(f"{person} has no token")
        return ".".join([VERSION, _b64(person.encode()), session.session_id,
                         str(session.issued_ms), str(session.expires), signature])

    def read(self, cookie: str) -> Session | None:
        """The session the cookie names when it is well formed, signed and not expired;
        whether it was ended is `caller`'s question."""
        parts = cookie.split(".")
        if len(parts) != 6 or parts[0] != VERSION or not (parts[3].isdigit()
                                                          and parts[4].isdigit()):
            return None
        person = _unb64(parts[1])
        if person is None:
            return None
        session = Session(person=person, session_id=parts[2], issued_ms=int(parts[3]),
                          expires=int(parts[4]))
        expected = self._signature(session)
        if expected is None or session.expires < self.clock():
            return None
        if not hmac.compare_digest(expected.encode(), parts[5].encode()):
            return None
        return session

    def caller(self, cookie: str) -> Caller | None:
        """Who the cookie signs in, unless its session was ended. Redis errors propagate
        (the API answers 503): never honour a session that may have been ended."""
        session = self.read(cookie)
        if session is None:
            return None
        ended, before = self.client.mget([keys.session_ended(session.session_id),
                                          keys.sessions_ended_before(session.person)])
        if ended is not None or (before is not None and session.issued_ms <= int(before)):
            return None
        return Caller(person=session.person,
                      operator=self.access.owner_operates(session.person))

    def end(self, cookie: str) -> bool:
        """Sign this session out on every API process; False when it was no valid session."""
        session = self.read(cookie)
        if session is None:
            return False
        remaining = max(1, int(session.expires - self.clock()) + 1)
        self.client.set(keys.session_ended(session.session_id), "1", ex=remaining)
        return True

    def end_all(self, person: str) -> None:
        """Every session of `person` made until now ends ("sign out everywhere")."""
        lifetime = int(self.access.session_s) + 1  # past it, those sessions expired anyway
        self.client.set(keys.sessions_ended_before(person), str(int(self.clock() * 1000)),
                        ex=lifetime)
