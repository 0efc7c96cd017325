"""What froze the old server, against the real worker: hangs, stalls, errors, kills."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import redis

from mysisterdb import keys
from tests.procs import Stack

HARD_LIMIT_S = 6.0
MARGIN_S = 4.0


def worker_pid_of(stack_redis: redis.Redis, job_id: str) -> int:
    raw = stack_redis.get(keys.job(job_id))
    assert raw is not None
    pid = json.loads(raw)["worker_pid"]
    assert isinstance(pid, int)
    return pid


def test_hang_fails_within_the_limit_and_health_stays_fast(stack: Stack,
                                                           conversation_id: str) -> None:
    started = time.monotonic()
    job = stack.submit("#sim:hang", conversation_id=conversation_id)
    slowest = 0.0
    while stack.job(job["id"])["status"] in ("queued", "in_progress"):
        t = time.monotonic()
        assert httpx.get(f"{stack.api_url}/api/health", timeout=5).status_code == 200
        slowest = max(slowest, time.monotonic() - t)
        assert time.monotonic() - started < HARD_LIMIT_S + MARGIN_S
        time.sleep(0.2)
    done = stack.job(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] in ("llm_timeout", "timeout")
    assert "タイムアウト" in done["error"]["message"]
    assert slowest < 1.0
    assert [s["status"] for s in done["steps"]][2:] == ["failed", "skipped"]
    nxt = stack.submit("もう大丈夫？", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"])["status"] == "completed"


def test_hard_limit_kills_a_task_that_ignores_every_timeout(stack: Stack,
                                                            conversation_id: str) -> None:
    started = time.monotonic()
    job = stack.submit("#worker:stuck", conversation_id=conversation_id)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S + 5)
    elapsed = time.monotonic() - started
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert elapsed >= HARD_LIMIT_S - 0.5  # it really ran until the hard limit
    assert elapsed < HARD_LIMIT_S + MARGIN_S
    # The parent replaced the killed child: the next prompt is served.
    nxt = stack.submit("次", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"])["status"] == "completed"


def test_stall_after_first_chunk_ends_incomplete_with_the_text(stack: Stack,
                                                               conversation_id: str) -> None:
    job = stack.submit("#sim:stall", conversation_id=conversation_id)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S)
    assert done["status"] == "incomplete"
    assert done["partial_reply"] == "えへへ、お兄ちゃん！"
    assert done["reply"] is None
    assert done["error"]["code"] in ("llm_timeout", "timeout")


def test_server_error_fails_after_bounded_retries(stack: Stack, conversation_id: str) -> None:
    marker = f"#sim:error=500 {conversation_id}"
    job = stack.submit(marker, conversation_id=conversation_id)
    done = stack.wait_job(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "llm_error"
    assert len(stack.sim_requests_containing(marker)) == 2  # first try + 1 retry


def test_rate_limit_is_retried_then_fails(stack: Stack, conversation_id: str) -> None:
    marker = f"#sim:error=429 {conversation_id}"
    done = stack.wait_job(stack.submit(marker, conversation_id=conversation_id)["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "llm_error")
    assert len(stack.sim_requests_containing(marker)) == 2


def test_client_error_is_not_retried(stack: Stack, conversation_id: str) -> None:
    marker = f"#sim:error=400 {conversation_id}"
    done = stack.wait_job(stack.submit(marker, conversation_id=conversation_id)["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "llm_error")
    assert len(stack.sim_requests_containing(marker)) == 1


def test_garbage_body_fails_with_llm_error(stack: Stack, conversation_id: str) -> None:
    done = stack.wait_job(stack.submit("#sim:garbage", conversation_id=conversation_id)["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "llm_error")


def test_kill_9_of_busy_child_ends_worker_lost_and_is_not_rerun(
        stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> None:
    marker = f"#sim:sleep=3 {conversation_id}"
    job = stack.submit(marker, conversation_id=conversation_id)
    stack.wait_job(job["id"], until=lambda j: j["steps"][2]["status"] == "in_progress")
    os.kill(worker_pid_of(stack_redis, job["id"]), signal.SIGKILL)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"
    time.sleep(4)  # long enough for a redelivery to have started
    assert len(stack.sim_requests_containing(marker)) == 1
    assert stack.job(job["id"])["status"] == "failed"
    nxt = stack.submit("生きてる？", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"])["status"] == "completed"
