"""Logging for every process: one line per event, to stderr and logs/mysisterdb.log (rotating).

Each line carries the job id and conversation id when there is one (set with `job_context`),
and any occurrence of the Gemini key is replaced before the line is written anywhere.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import re
from collections.abc import Iterator
from contextlib import contextmanager

from core.files import private_dir
from core.secrets import register, registered
from core.settings import Settings

LOG_FILE = "mysisterdb.log"
FORMAT = ("%(asctime)s %(levelname)s %(process_name)s[%(process)d] %(name)s "
          "job=%(job_id)s conv=%(conversation_id)s %(message)s")
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5

# redis-py puts the repr of each client it tried into some errors (MasterNotFoundError: one
# per Sentinel, ~1 kB each); a log line keeps the address it names.
CLIENT_REPR = re.compile(
    r"<redis\.(?:asyncio\.)?client\.Redis\(.*?\bhost=([^,]+),port=(\d+),.*?\)>\)>\)>", re.S)

_job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")
_conversation_id: contextvars.ContextVar[str] = contextvars.ContextVar("conv", default="-")


@contextmanager
def job_context(*, job_id: str, conversation_id: str) -> Iterator[None]:
    t1, t2 = _job_id.set(job_id), _conversation_id.set(conversation_id)
    try:
        yield
    finally:
        _job_id.reset(t1)
        _conversation_id.reset(t2)


class ContextFilter(logging.Filter):
    """Adds job and conversation ids, and scrubs secrets from the rendered message."""

    def __init__(self, *, process_name: str, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.process_name = process_name
        self.fixed = [s for s in secrets or [] if s]

    @property
    def secrets(self) -> list[str]:
        # The registry is read at each record: a secret registered after logging was set up
        # (a generated token, a token file read at start) is scrubbed too.
        return self.fixed + registered()

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = getattr(record, "job_id", None) or _job_id.get()
        record.conversation_id = getattr(record, "conversation_id", None) or _conversation_id.get()
        record.process_name = self.process_name
        secrets = self.secrets
        message = record.getMessage()
        if "client.Redis(" in message:
            message = CLIENT_REPR.sub(lambda m: f"{m.group(1)}:{m.group(2)}", message)
            record.msg, record.args = message, None
        if secrets:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            for secret in secrets:
                message = message.replace(secret, "***")
                if record.exc_text:
                    record.exc_text = record.exc_text.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def configure_logging(settings: Settings, *, process: str) -> None:
    """Idempotent: replaces the handlers this function installed before."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_mysisterdb", False)]:
        root.removeHandler(handler)
    for secret in settings.secret_values():
        register(secret)
    context = ContextFilter(process_name=process)
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    private_dir(settings.log_dir)
    handlers.append(logging.handlers.RotatingFileHandler(
        settings.log_dir / LOG_FILE, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context)
        handler._mysisterdb = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
