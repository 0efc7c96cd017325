"""A reply streamed whole whose end then fails keeps its whole text: the chunks the coalescing
writer held back for the end are written before the failure is recorded.

Real redis-server, the real simulator, the real Gemini client, pipeline, lifecycle and task
handler, run in this process as a pool child runs them. Only the soft time limit is placed by
the test: billiard's signal handler raises SoftTimeLimitExceeded from whatever the child runs
at that moment; here it is raised from `reply_message`, the step between the stream's end
and the end's transaction (a window of milliseconds no timer hits reliably).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded

from context.tokens import count_tokens
from core.models import JobStatus
from core.settings import Settings
from mysisterdb.redis_server import RedisServer
from mysisterdb.simulator import reply_chunks
from workers import pipeline, tasks
from workers.runtime import build_runtime

CID = "c-end-fails"


def test_a_soft_limit_between_the_stream_and_the_end_keeps_the_whole_text(
        redis_server: RedisServer, redis_client: redis.Redis, simulator_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(redis_url=redis_server.url, gemini_endpoint=simulator_url,
                        stream_write_interval_s=5, gemini_timeout=3, gemini_retries=0)
    rt = build_runtime(settings)
    # Chunks 0.25 s apart: the first is written at once, the rest wait for the end (5 s).
    text = "#sim:pace=1 さいごまで話して"
    job = rt.lifecycle.submit(conversation_id=CID, text=text, tokens=count_tokens(text)).job
    claim = rt.lifecycle.claim(job.id)
    assert claim.job is not None

    def soft_limit_here(*_: Any, **__: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(pipeline, "reply_message", soft_limit_here)
    assert tasks.run_guarded(rt, claim.job, deadline=float("inf")) == "timeout"
    done = rt.lifecycle.jobs.get(job.id)
    assert (done.status, done.error.code.value if done.error else None) == (
        JobStatus.INCOMPLETE, "timeout"), done
    assert done.partial_reply == "".join(reply_chunks(text))
    assert [m.role for m in rt.history.last(CID, limit=10)] == ["user"]  # no reply saved
