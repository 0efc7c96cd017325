"""Settings, logging and the Celery configuration: pure unit tests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from core.logs import ContextFilter, job_context
from core.settings import Settings
from mysisterdb.redis_server import free_port


def test_limits_must_be_ordered() -> None:
    with pytest.raises(ValidationError):
        Settings(task_time_limit=10, task_soft_time_limit=10)
    with pytest.raises(ValidationError):
        Settings(task_time_limit=10, task_soft_time_limit=5, gemini_timeout=5)


def test_no_key_or_empty_key_means_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "")
    assert Settings().uses_simulator and Settings().llm_mode == "simulator"
    monkeypatch.setenv("GEMINI_API_KEY", "k-123")
    assert Settings().llm_mode == "gemini"
    assert "k-123" not in repr(Settings()) and "k-123" not in str(Settings().model_dump())


@pytest.mark.parametrize("sentinels", [None, "10.0.0.1:26379,10.0.0.2:26379"])
def test_no_repr_shows_the_redis_password(sentinels: str | None) -> None:
    """The password lives in settings.redis_url (every client reads it from there): the
    settings' repr, and the Sentinel target parsed from the URL, must not print it."""
    from core import redis_sentinel

    settings = Settings(redis_url="redis://redis:6379/0", redis_password="pw-not-in-repr",
                        redis_sentinels=sentinels)
    assert "pw-not-in-repr" in (settings.redis_url or "")
    assert "pw-not-in-repr" not in repr(settings) and "pw-not-in-repr" not in str(settings)
    if sentinels:
        assert "pw-not-in-repr" not in repr(redis_sentinel.target(settings.redis_url or ""))


def test_google_api_key_is_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "g-456")
    key = Settings().gemini_api_key
    assert key is not None and key.get_secret_value() == "g-456"


def test_secrets_are_read_from_their_files(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "MYSISTERDB_OPERATOR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    key, operator = tmp_path / "gemini_api_key", tmp_path / "operator_token"
    key.write_text("k-from-file\n")
    operator.write_text("operator-token-from-a-file\n")
    monkeypatch.setenv("GEMINI_API_KEY_FILE", str(key))
    monkeypatch.setenv("MYSISTERDB_OPERATOR_TOKEN_FILE", str(operator))
    settings = Settings()
    assert settings.gemini_api_key is not None and settings.operator_token is not None
    assert settings.gemini_api_key.get_secret_value() == "k-from-file"
    assert settings.operator_token.get_secret_value() == "operator-token-from-a-file"
    assert "k-from-file" in settings.secret_values()  # scrubbed from the logs like the rest
    key.write_text("")  # compose mounts an empty file when there is no key
    assert Settings().uses_simulator
    monkeypatch.setenv("GEMINI_API_KEY", "k-123")
    with pytest.raises(ValidationError, match="not both"):
        Settings()
    monkeypatch.delenv("GEMINI_API_KEY")
    key.chmod(0o000)
    if os.geteuid() != 0:  # root reads any file
        with pytest.raises(ValidationError, match="0644 inside a 0700 folder"):
            Settings()


def test_gemini_sdk_defaults_to_genai_and_is_switched_by_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYSISTERDB_GEMINI_SDK", raising=False)
    assert Settings().gemini_sdk == "genai"
    monkeypatch.setenv("MYSISTERDB_GEMINI_SDK", "generativeai")
    assert Settings().gemini_sdk == "generativeai"
    monkeypatch.setenv("MYSISTERDB_GEMINI_SDK", "openai")
    with pytest.raises(ValidationError):
        Settings()


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("x", logging.ERROR, __file__, 1, message, args, exc_info)


def test_log_filter_scrubs_the_key_from_messages_and_tracebacks() -> None:
    secret = "AIza-secret"
    flt = ContextFilter(process_name="t", secrets=[secret])
    rec = record("calling with key=%s", secret)
    flt.filter(rec)
    assert secret not in rec.getMessage() and "***" in rec.getMessage()
    try:
        raise RuntimeError(f"failed with {secret}")
    except RuntimeError as exc:
        rec = record("boom", exc=exc)
    flt.filter(rec)
    assert rec.exc_text and secret not in rec.exc_text


def test_a_no_primary_error_logs_the_sentinels_it_asked_not_their_clients() -> None:
    """redis-py's MasterNotFoundError carries the repr of every Sentinel client (~1 kB each)."""
    ports = [free_port(), free_port()]
    sentinel = Sentinel([("127.0.0.1", p) for p in ports], socket_timeout=0.2,
                        sentinel_kwargs={"socket_timeout": 0.2, "retry": Retry(NoBackoff(), 0)})
    with pytest.raises(MasterNotFoundError) as caught:
        sentinel.discover_master("mymaster")
    assert "client.Redis(" in str(caught.value)  # what the line would have carried
    rec = record("heartbeat failed: %s", caught.value)
    ContextFilter(process_name="t", secrets=[]).filter(rec)
    line = rec.getMessage()
    assert "client.Redis(" not in line and len(line) < 300, line
    assert all(f"127.0.0.1:{p}" in line for p in ports), line


def test_log_lines_carry_the_job_and_conversation() -> None:
    flt = ContextFilter(process_name="t", secrets=[])
    with job_context(job_id="j1", conversation_id="c1"):
        rec = record("step")
        flt.filter(rec)
    assert (rec.job_id, rec.conversation_id) == ("j1", "c1")  # type: ignore[attr-defined]
    outside = record("idle")
    flt.filter(outside)
    assert outside.job_id == "-"  # type: ignore[attr-defined]


def test_celery_is_configured_against_freezes_and_leaks() -> None:
    from taskqueue.app import create_celery

    settings = Settings(redis_url="redis://127.0.0.1:1/0", task_time_limit=60,
                        task_soft_time_limit=50, worker_max_tasks_per_child=7,
                        worker_max_memory_per_child_mb=300)
    conf = create_celery(settings).conf
    assert (conf.task_time_limit, conf.task_soft_time_limit) == (60, 50)
    assert conf.task_acks_late and not conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > 60
    assert conf.worker_max_tasks_per_child == 7
    assert conf.worker_max_memory_per_child == 300 * 1024
