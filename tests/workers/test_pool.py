"""The worker's pool settings: a fixed chat pool by default, autoscale bounds when set, the
summary pool, the roles; and what the main process preloads before forking. Pure unit tests
(no worker is started)."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from core.settings import Settings
from mysisterdb.cli import build_parser, main
from workers.__main__ import parse_role, worker_argv


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_chat_slots_follow_the_load_between_min_and_max() -> None:
    argv = worker_argv(settings(worker_concurrency=24, worker_min_concurrency=3), "chat", [])
    assert "--autoscale=24,3" in argv and "--queues=chat" in argv
    assert not [a for a in argv if a.startswith("--concurrency")]


def test_default_slots_suit_io_bound_calls() -> None:
    s = settings()
    assert (s.worker_concurrency, s.worker_min_concurrency, s.summary_concurrency) == (32, 32, 1)


def test_by_default_every_chat_slot_is_forked_at_start() -> None:
    argv = worker_argv(settings(worker_concurrency=24), "chat", [])
    assert "--concurrency=24" in argv and not [a for a in argv if "autoscale" in a]


def test_summary_has_its_own_fixed_pool_and_node_name() -> None:
    argv = worker_argv(settings(summary_concurrency=2), "summary", [])
    assert "--concurrency=2" in argv and "--queues=summary" in argv
    assert "--hostname=summary@%h" in argv and not [a for a in argv if "autoscale" in a]


def test_all_consumes_both_queues_in_one_pool() -> None:
    argv = worker_argv(settings(), "all", ["--loglevel=DEBUG"])
    assert "--queues=chat,summary" in argv and "--concurrency=32" in argv
    assert argv[-1] == "--loglevel=DEBUG"


def test_recycling_is_kept() -> None:
    from taskqueue.app import create_celery

    conf = create_celery(settings(worker_max_tasks_per_child=50,
                                  worker_max_memory_per_child_mb=300)).conf
    assert conf.worker_max_tasks_per_child == 50
    assert conf.worker_max_memory_per_child == 300 * 1024


def test_a_lower_maximum_lowers_the_default_minimum() -> None:
    assert settings(worker_concurrency=1).worker_min_concurrency == 1


def test_a_minimum_above_the_maximum_is_refused() -> None:
    with pytest.raises(ValidationError):
        settings(worker_concurrency=4, worker_min_concurrency=5)
    with pytest.raises(ValidationError):
        settings(worker_concurrency=0)


def test_the_role_is_parsed_and_the_rest_goes_to_celery() -> None:
    assert parse_role(["--role", "summary", "--loglevel=DEBUG"]) == ("summary",
                                                                     ["--loglevel=DEBUG"])
    assert parse_role([]) == ("all", [])
    with pytest.raises(SystemExit):
        parse_role(["--role", "nonsense"])


def test_mysisterdb_worker_passes_the_role_and_celery_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    execed: list[list[str]] = []
    monkeypatch.setattr("os.execv", lambda _path, argv: execed.append(argv))
    main(["worker", "--role", "chat", "--loglevel=DEBUG"])
    assert execed[0][1:] == ["-m", "workers", "--role", "chat", "--loglevel=DEBUG"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--role", "nonsense"])


PRELOAD_PROBE = """
import gc, json, sys
from pydantic._internal._mock_val_ser import MockValSer
from google.genai import types
from workers.preload import GENAI_MODELS, preload
from core.settings import Settings
def built():
    return sorted(n for n in GENAI_MODELS if hasattr(types, n)
                  and not isinstance(getattr(types, n).__pydantic_validator__, MockValSer))
from context import tokens
before = {"built": built(), "tokens": tokens.encoder.cache_info().currsize,
          "frozen": gc.get_freeze_count(), "client": "workers.llm_genai" in sys.modules}
done = preload(Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0"))
after = {"built": built(), "tokens": tokens.encoder.cache_info().currsize,
         "frozen": gc.get_freeze_count(), "client": "workers.llm_genai" in sys.modules}
print(json.dumps([before, after, done.frozen_objects]))
"""


def test_preload_loads_what_children_share_and_freezes_it() -> None:
    """In a fresh interpreter, as the worker's main process is."""
    import json
    import subprocess

    from tests.procs import ROOT

    out = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    before, after, frozen = json.loads(out.splitlines()[-1])
    assert before == {"built": [], "tokens": 0, "frozen": 0, "client": False}
    assert after["tokens"] == 1 and after["client"] is True
    assert len(after["built"]) >= 10  # google-genai's deferred models for a reply and embed
    assert after["frozen"] > 10_000 and frozen > 10_000


def test_every_genai_client_shares_the_tls_context_built_once() -> None:
    from workers.llm import RetryPolicy
    from workers.llm_genai import GenAIClient, shared_tls_args

    shared = shared_tls_args()
    assert shared is not None
    clients = [GenAIClient(api_key="k", model="m", endpoint="http://127.0.0.1:1",
                           policy=RetryPolicy(timeout_s=1, retries=0, backoff_s=0.1),
                           embedding_model="e", embedding_dim=8) for _ in range(2)]
    contexts = {id(c._client._api_client._http_options.client_args["verify"]) for c in clients}
    assert contexts == {id(shared[0]["verify"])}
