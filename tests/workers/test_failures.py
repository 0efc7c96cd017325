"""What froze the old server, against the real worker: hangs, stalls, errors, kills."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from core import keys
from mysisterdb.redis_server import start_redis
from mysisterdb.simulator import reply_chunks
from tests.conftest import start_stack
from tests.procs import Stack, wait_for

# The stack's limits (tests/conftest.py): hard 6 s, soft 4 s, Gemini read timeout 1.5 s.
HARD_LIMIT_S = 6.0
# Time bounds are promises here (a job ends by the hard limit; health answers within 1 s):
# asserted with margins for a loaded 2-core machine. The figures: bench/failure_bench.py.
MARGIN_S = 4.0
HEALTH_BOUND_S = 1.0 + 1.0


def worker_pid_of(stack_redis: redis.Redis, job_id: str) -> int:
    raw = stack_redis.get(keys.job(job_id))
    assert raw is not None
    pid = json.loads(raw)["worker_pid"]
    assert isinstance(pid, int)
    return pid


def broker_holds(client: redis.Redis, job_id: str) -> bool:
    unacked = client.hvals(keys.BROKER_UNACKED)
    waiting = [m for q in keys.broker_queue_lists("chat") for m in client.lrange(q, 0, -1)]
    return any(job_id.encode() in m for m in [*unacked, *waiting])


def incident_of(client: redis.Redis, job_id: str) -> dict[str, str]:
    found = [json.loads(raw) for raw in client.lrange(keys.incidents(), 0, -1)
             if job_id.encode() in raw]
    assert len(found) == 1, found
    return found[0]  # type: ignore[no-any-return]


def send_copy(stack: Stack, job_id: str) -> None:
    """A second delivery of a job's message, as Redis's at-least-once delivery may make."""
    from core.ports import CHAT_TASK
    from core.settings import Settings
    from taskqueue.app import create_celery

    create_celery(Settings(redis_url=stack.redis_url)).send_task(
        CHAT_TASK, args=[job_id], task_id=job_id)


def test_a_duplicate_delivery_never_runs_a_prompt_twice(stack: Stack,
                                                        conversation_id: str) -> None:
    marker = f"#sim:sleep=1 {conversation_id}"
    job = stack.submit(marker, conversation_id=conversation_id)
    stack.wait_job(job["id"], until=lambda j: j["status"] == "in_progress")
    send_copy(stack, job["id"])  # while it runs
    done = stack.wait_job(job["id"])
    assert done["status"] == "completed", done
    assert done["reply"].count("えへへ") == 1  # one stream, not two interleaved
    send_copy(stack, job["id"])  # after it ended
    nxt = stack.submit("つぎ", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"])["status"] == "completed"
    assert len(stack.sim_requests_asking(marker)) == 1
    assert stack.job(job["id"])["status"] == "completed"


def test_a_lost_queued_job_expires_and_frees_its_conversation(
        stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> None:
    from datetime import timedelta

    from core.jobs import JobStore
    from core.models import Job, utcnow

    # Turn 1's job was stored long ago but its message never reached the broker (and it is
    # not in the outbox either): the sweep expires it and hands the line to turn 2.
    lost = Job(id=uuid.uuid4().hex, conversation_id=conversation_id, turn=1,
               created_at=utcnow() - timedelta(hours=1))
    with stack_redis.pipeline(transaction=True) as pipe:
        JobStore.create(pipe, lost)
        pipe.set(keys.conv_turn(conversation_id), 1)
        pipe.execute()
    job = stack.submit("まだ？", conversation_id=conversation_id)
    assert stack.wait_job(job["id"])["status"] == "completed"
    expired = stack.job(lost.id)
    assert (expired["status"], expired["error"]["code"]) == ("failed", "expired")


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
    # Whichever bound ends it first (retries end 0.5 s before the soft limit on purpose): each
    # path on its own is test_stall_... (llm_timeout) and test_soft_limit_cuts_... (timeout).
    assert done["error"]["code"] in ("llm_timeout", "timeout")
    assert "タイムアウト" in done["error"]["message"]
    assert slowest < HEALTH_BOUND_S
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


def test_soft_limit_interrupts_a_python_loop_and_the_worker_serves_on(
        stack: Stack, stack_redis: redis.Redis, conversation_id: str) -> None:
    job = stack.submit("#worker:spin", conversation_id=conversation_id)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S)
    assert (done["status"], done["error"]["code"]) == ("failed", "timeout")
    assert [s["status"] for s in done["steps"]][2:] == ["failed", "skipped"]
    # The soft limit's own path, in the child: not the parent's SIGKILL at the hard limit.
    assert incident_of(stack_redis, job["id"])["action"].startswith(
        "ソフトリミット（4 秒）でタスクを中断した")
    nxt = stack.submit("まだいる？", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"])["status"] == "completed"


def test_stall_after_first_chunk_ends_incomplete_with_the_text(stack: Stack,
                                                               conversation_id: str) -> None:
    job = stack.submit("#sim:stall", conversation_id=conversation_id)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S)
    assert done["status"] == "incomplete"
    assert done["partial_reply"] == "えへへ、お兄ちゃん！"
    assert done["reply"] is None
    # The read timeout (1.5 s after the first chunk) ends it, long before the soft limit (4 s).
    assert done["error"]["code"] == "llm_timeout"


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
    marker = f"#sim:sleep=1 {conversation_id}"  # under the 1.5 s request timeout
    job = stack.submit(marker, conversation_id=conversation_id)
    stack.wait_job(job["id"], until=lambda j: j["steps"][2]["status"] == "in_progress")
    os.kill(worker_pid_of(stack_redis, job["id"]), signal.SIGKILL)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"
    # Ended by the worker's parent, which saw its child die, not by the sweep later on.
    assert incident_of(stack_redis, job["id"])["action"] == (
        "ワーカープロセスを入れ替えた（プロンプトは再実行しない）")
    # Not run again: the broker holds no copy of its message (unacked ones are redelivered).
    wait_for(lambda: not broker_holds(stack_redis, job["id"]), timeout_s=3,
             what="the message acknowledged")
    assert len(stack.sim_requests_containing(marker)) == 1
    nxt = stack.submit("生きてる？", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"])["status"] == "completed"


@pytest.fixture(scope="module")
def patient_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose Gemini read timeout (3 s) is far above the simulator's gap between
    chunks, so only the soft limit (4 s) can end a slow stream."""
    log_dir = tmp_path_factory.mktemp("patient")
    server = start_redis()
    running = start_stack(redis_url=server.url, log_dir=log_dir,
                          extra={"MYSISTERDB_GEMINI_TIMEOUT": "3"})
    yield running
    running.stop()
    server.stop()


def test_soft_limit_cuts_a_slow_stream_ends_timeout_and_keeps_the_text(
        patient_stack: Stack) -> None:
    stack, cid = patient_stack, f"soft-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    # A chunk every 2 s (8 s / 4 chunks): each read waits 2 s, under the 3 s read timeout;
    # the whole reply would take 8 s, past the soft limit (4 s) and the hard limit (6 s).
    text = "ゆっくりね #sim:pace=8"
    job = stack.submit(text, conversation_id=cid)
    done = stack.wait_job(job["id"], timeout_s=HARD_LIMIT_S + MARGIN_S)
    assert (done["status"], done["error"]["code"]) == ("incomplete", "timeout"), done
    # What arrived before the limit is kept (the first chunk, at 2 s), never the whole reply.
    whole, partial = "".join(reply_chunks(text)), done["partial_reply"]
    assert partial.startswith(reply_chunks(text)[0]) and whole.startswith(partial)
    assert partial != whole and done["reply"] is None
    # The soft limit's own path, in the child: not the read timeout, not the hard limit.
    assert incident_of(client, job["id"])["action"].startswith("ソフトリミット（4 秒）でタスクを中断した")
    nxt = stack.submit("まだいる？", conversation_id=cid)
    assert stack.wait_job(nxt["id"])["status"] == "completed"
