"""Incidents and metrics, recorded by the real worker and read through the API and CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.procs import ROOT, Stack, wait_for


def incidents(stack: Stack) -> list[dict[str, str]]:
    r = httpx.get(f"{stack.api_url}/api/incidents", params={"limit": 100}, timeout=5)
    assert r.status_code == 200
    return r.json()["incidents"]  # type: ignore[no-any-return]


def cli(stack: Stack, *args: str) -> str:
    env = {**os.environ, "MYSISTERDB_REDIS_URL": stack.redis_url}
    done = subprocess.run([sys.executable, "-m", "mysisterdb", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def test_a_hang_is_recorded_as_an_incident(stack: Stack, conversation_id: str) -> None:
    text = f"#sim:hang 枡元といえば？ｗ {conversation_id}"
    job = stack.submit(text, conversation_id=conversation_id)
    done = stack.wait_job(job["id"], timeout_s=15)
    found = [i for i in incidents(stack) if i["job_id"] == job["id"]]
    assert len(found) == 1
    incident = found[0]
    assert incident["kind"] == done["error"]["code"] == "llm_timeout"
    assert incident["step"] == "generate"
    assert incident["input"] == text
    assert incident["cause"].startswith("llm_timeout: ")
    assert incident["action"] == "リクエストを最大 1 回再試行したが失敗した"  # in Japanese, like the table
    table = cli(stack, "incidents", "--markdown")
    assert table.splitlines()[0] == "| 発生日時 | 発生状況 | 入力内容 | 根本原因 | 解決策 |"
    assert any(conversation_id in line and "llm_timeout" in line for line in table.splitlines())
    assert job["id"] in cli(stack, "incidents")


def test_incidents_are_newest_first_and_limited(stack: Stack, conversation_id: str) -> None:
    for n in (1, 2):
        job = stack.submit(f"#sim:error=503 {n} {conversation_id}", conversation_id=conversation_id)
        stack.wait_job(job["id"])
    newest = httpx.get(f"{stack.api_url}/api/incidents", params={"limit": 2}, timeout=5).json()
    inputs = [i["input"] for i in newest["incidents"]]
    assert inputs == [f"#sim:error=503 2 {conversation_id}", f"#sim:error=503 1 {conversation_id}"]


def test_completed_jobs_are_not_incidents(stack: Stack, conversation_id: str) -> None:
    job = stack.submit("ふつうの話", conversation_id=conversation_id)
    stack.wait_job(job["id"])
    assert all(i["job_id"] != job["id"] for i in incidents(stack))


def metric_value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starting with {prefix!r}")


def test_metrics_count_jobs_and_expose_the_usual_names(stack: Stack,
                                                       conversation_id: str) -> None:
    def scrape() -> str:
        r = httpx.get(f"{stack.api_url}/metrics", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return r.text

    key = 'mysisterdb_jobs_total{error_code="",status="completed"}'
    before = metric_value(scrape(), key) if key in scrape() else 0.0
    stack.wait_job(stack.submit("数えてね", conversation_id=conversation_id)["id"])
    text = scrape()
    assert metric_value(text, key) == before + 1
    for name in ('celery_queue_length{queue_name="chat"}', "celery_task_runtime_bucket",
                 "mysisterdb_job_duration_seconds_count", 'celery_worker_up{hostname=',
                 'mysisterdb_llm_latency_seconds_bucket{le="0.1",outcome="ok"}',
                 'mysisterdb_step_duration_seconds_count{step="generate"}',
                 "mysisterdb_workers_online", "process_resident_memory_bytes",
                 "mysisterdb_worker_memory_bytes", "mysisterdb_queue_reserved"):
        assert name in text, name


def test_metrics_count_time_limits(stack: Stack, conversation_id: str) -> None:
    def hard() -> float:
        text = httpx.get(f"{stack.api_url}/metrics", timeout=5).text
        prefix = 'mysisterdb_time_limits_hit_total{kind="hard"}'
        return metric_value(text, prefix) if prefix in text else 0.0

    before = hard()
    job = stack.submit("#worker:stuck", conversation_id=conversation_id)
    assert stack.wait_job(job["id"], timeout_s=15)["error"]["code"] == "timeout"
    # The job may be ended by Celery's failure handler a moment before its timeout handler
    # counts the hard limit (seen in CI's parallel run): the count is waited for.
    wait_for(lambda: hard() == before + 1, timeout_s=5, what="the hard limit counted once")
    assert hard() == before + 1
