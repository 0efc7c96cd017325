"""Who may do what: people with access tokens, the operator, and the sessions of the page.

Three modes, chosen at start from the settings (docs/runbook.md, "Security settings"):

    open       no token configured and everything says only this machine talks to the API
               (`local_only`): a loopback bind, only loopback names in
               MYSISTERDB_ALLOWED_HOSTS, no MYSISTERDB_PUBLIC_URL. One person (`OWNER`), who
               is also the operator; nobody signs in. A request that still arrives through
               a proxy (forwarding headers, another Host) is refused: 403 proxy_needs_token.
    generated  no token configured and anything else (a container's 0.0.0.0, a public URL, a
               domain in the allowed hosts: a proxy in front): fail closed. A token is
               generated at first start, kept 0600 in the data directory (`mysisterdb token`
               prints it), and is `OWNER`'s and the operator's.
    tokens     MYSISTERDB_API_TOKENS / MYSISTERDB_API_TOKENS_FILE name the people;
               MYSISTERDB_OPERATOR_TOKEN (if set) opens the operator routes.

A person's conversations are theirs alone (the lifecycle stores each conversation's owner).
`OWNER` is also the owner of conversations from before owners were stored, so a single
person keeps their history when tokens are turned on: name one token `owner` to keep it.

Tokens are compared in constant time (`hmac.compare_digest` over SHA-256 digests, every
entry compared), never logged (each is registered with the log scrubber) and never put in a
URL that reaches the server (the sign-in URL carries it after `#`).

The chat page's session is a signed cookie that holds no token and names a session the
server can end: core/sessions.py.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from core.files import secret_in_file
from core.secrets import register
from core.settings import Settings

logger = logging.getLogger(__name__)

OWNER = "owner"  # the one person of the open and generated modes; owner of legacy data
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_TOKEN_CHARS = 16
SIGN_IN_PATH = "/signin"


class Mode(StrEnum):
    OPEN = "open"
    GENERATED = "generated"
    TOKENS = "tokens"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a person (their conversations), and whether they may use the
    operator routes."""

    person: str | None
    operator: bool = False


def digest(token: str) -> bytes:
    # Equal-length values for compare_digest: the time taken says nothing about the length.
    return hashlib.sha256(token.encode()).digest()


def parse_token_lines(lines: Iterable[str], *, source: str) -> dict[str, str]:
    """{name: token} from "name:TOKEN" entries; blank lines and # comments skipped.
    Names and tokens are checked; the error never quotes a token."""
    people: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = (part.strip() for part in line.partition(":"))
        if not sep or not NAME.fullmatch(name):
            raise ValueError(f"{source}, entry {number}: expected name:TOKEN with a name of "
                             "letters, digits, . _ - (1-64)")
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ValueError(f"{source}, entry {number} ({name}): the token must be at least "
                             f"{MIN_TOKEN_CHARS} characters, without spaces "
                             "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if name in people:
            raise ValueError(f"{source}: {name} is listed twice")
        people[name] = token
    return people


def configured_people(settings: Settings) -> dict[str, str]:
    people: dict[str, str] = {}
    if settings.api_tokens is not None:
        people |= parse_token_lines(settings.api_tokens.get_secret_value().split(","),
                                    source="MYSISTERDB_API_TOKENS")
    if settings.api_tokens_file is not None:
        text = settings.api_tokens_file.read_text(encoding="utf-8")
        for name, token in parse_token_lines(text.splitlines(),
                                             source=str(settings.api_tokens_file)).items():
            if name in people:
                raise ValueError(f"{name} is in MYSISTERDB_API_TOKENS and its file")
            people[name] = token
    return people


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def not_local_because(settings: Settings) -> str | None:
    """Why the settings say that others may reach the API (so open mode would hand them
    everything), or None when only this machine can."""
    if not is_loopback(settings.host):
        return f"it listens on {settings.host}"
    if settings.public_url:
        return "MYSISTERDB_PUBLIC_URL is set"
    others = [h for h in settings.host_list() if not is_loopback(h.strip("[]"))]
    if others:
        return f"MYSISTERDB_ALLOWED_HOSTS names {', '.join(others)}"
    return None


@dataclass
class Access:
    """The policy in force: who each token is, and the page's sessions."""

    mode: Mode
    people: dict[str, str] = field(default_factory=dict)  # name -> token
    operator_token: str | None = None
    session_s: float = 14 * 86400

    def __post_init__(self) -> None:
        for secret in [*self.people.values(), self.operator_token]:
            register(secret)  # scrubbed from every log line and incident from now on
        self._entries = [(digest(t), Caller(person=n, operator=self.owner_operates(n)))
                         for n, t in self.people.items()]
        if self.operator_token:
            self._entries.append((digest(self.operator_token), Caller(None, operator=True)))

    def owner_operates(self, name: str) -> bool:
        # Only the generated token is both: with configured tokens, operating takes its own.
        return self.mode is Mode.GENERATED and name == OWNER

    @property
    def needs_credentials(self) -> bool:
        return self.mode is not Mode.OPEN

    def anonymous(self) -> Caller | None:
        """Who a request without credentials is: the one person in open mode (the operator
        too, unless an operator token is set), else nobody."""
        if self.mode is Mode.OPEN:
            return Caller(person=OWNER, operator=self.operator_token is None)
        return None

    def identify(self, token: str) -> Caller | None:
        """The caller this token belongs to, or None. Every entry is compared, in constant
        time: neither the time nor an early exit tells how close a guess was."""
        given = digest(token)
        found: Caller | None = None
        for stored, caller in self._entries:
            if hmac.compare_digest(given, stored):
                found = caller
        if found is not None and self.mode is Mode.OPEN and found.person is None:
            # Open mode with an operator token: the operator is also the one person.
            return Caller(person=OWNER, operator=True)
        return found


Announce = Callable[[str], None]


def load_access(settings: Settings, *, announce: Announce | None = None) -> Access:
    """The policy from the settings; in generated mode the token is created on first start
    (and `announce` is told the sign-in URL that one time, as Jupyter prints its own)."""
    people = configured_people(settings)
    operator = (settings.operator_token.get_secret_value()
                if settings.operator_token is not None else None)
    if operator is not None and len(operator) < MIN_TOKEN_CHARS:
        raise ValueError(f"MYSISTERDB_OPERATOR_TOKEN must be at least {MIN_TOKEN_CHARS} "
                         "characters")
    session_s = settings.session_days * 86400
    if people:
        return Access(Mode.TOKENS, people, operator, session_s)
    because = not_local_because(settings)
    if because is None:
        return Access(Mode.OPEN, {}, operator, session_s)
    logger.warning("no access token configured and %s: signing in is required "
                   "(generated token)", because)
    created = not settings.api_token_file.exists()
    token = generated_token(settings.api_token_file)
    access = Access(Mode.GENERATED, {OWNER: token}, operator, session_s)
    if announce is not None:
        announce(sign_in_message(settings, token, created=created))
    return access


def generated_token(path: Path) -> str:
    return secret_in_file(path, nbytes=32)


def sign_in_url(settings: Settings, token: str) -> str:
    host = settings.host if is_loopback(settings.host) else "localhost"
    base = settings.public_url.rstrip("/") if settings.public_url else f"http://{host}:{settings.port}"
    # After '#': the browser keeps the fragment to itself, so the token reaches no access log.
    return f"{base}{SIGN_IN_PATH}#token={token}"


def sign_in_message(settings: Settings, token: str, *, created: bool) -> str:
    """What the API prints at start in generated mode. The token (in the sign-in URL) only
    the first time, when it was just created: stdout ends up in `docker compose logs` and
    journals, kept and shipped far longer than a start takes; later starts say where it is."""
    where = (f"MySisterDB listens on {settings.host}:{settings.port} with no token configured, "
             f"so it {{what}} kept in {settings.api_token_file} (`mysisterdb token` prints it, "
             "`mysisterdb token --url` the sign-in URL; API clients send it as "
             "`Authorization: Bearer <token>`).")
    if not created:
        return where.format(what="uses the access token")
    return (where.format(what="generated an access token") +
            f"\n    Sign in: {sign_in_url(settings, token)}\n"
            "    (shown this once: later starts do not print it)")
