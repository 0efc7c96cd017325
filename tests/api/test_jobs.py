"""GET /api/jobs/{id}, cancel, and the plain endpoints."""

from __future__ import annotations

import httpx

from tests.procs import Stack


def test_unknown_job_is_404_with_error_body(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/api/jobs/{'0' * 32}", timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_a_malformed_job_id_is_422_in_words(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/api/jobs/doesnotexist", timeout=5)
    assert r.status_code == 422
    assert r.json()["error"] == {"code": "invalid_input", "message":
                                 "ジョブ ID（job_id）の形式が正しくありません（32桁の16進数（0-9, a-f））。"}


def test_cancel_running_job(stack: Stack, conversation_id: str) -> None:
    job = stack.submit("長い話 #sim:sleep=5", conversation_id=conversation_id)
    stack.wait_job(job["id"], until=lambda j: j["status"] == "in_progress")
    r = httpx.post(f"{stack.api_url}/api/jobs/{job['id']}/cancel", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    again = httpx.post(f"{stack.api_url}/api/jobs/{job['id']}/cancel", timeout=5)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    # The next prompt of the conversation is not held up by the cancelled one.
    nxt = stack.submit("次の話", conversation_id=conversation_id)
    assert stack.wait_job(nxt["id"], timeout_s=10)["status"] == "completed"
    assert stack.job(job["id"])["status"] == "cancelled"
    assert stack.job(job["id"])["reply"] is None
    # The terminated task left no reply in the history: turn 1 is cancelled, without a reply.
    turns = httpx.get(f"{stack.api_url}/api/conversations/{conversation_id}/messages",
                      timeout=5).json()["turns"]
    assert [(t["turn"], t["state"], t["reply"] is None) for t in turns] == [
        (1, "cancelled", True), (2, "completed", False)]


def test_cancel_queued_job_never_runs_it(stack: Stack, conversation_id: str) -> None:
    first = stack.submit("先の話 #sim:sleep=1", conversation_id=conversation_id)
    second = stack.submit(f"取り消す話 {conversation_id}", conversation_id=conversation_id)
    r = httpx.post(f"{stack.api_url}/api/jobs/{second['id']}/cancel", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    third = stack.submit("その次の話", conversation_id=conversation_id)
    assert stack.wait_job(first["id"])["status"] == "completed"
    # Turns run in order: had the cancelled one run, it would have run before the third.
    assert stack.wait_job(third["id"])["status"] == "completed"
    assert stack.sim_requests_asking(f"取り消す話 {conversation_id}") == []
    assert stack.sim_requests_asking("その次の話")


def test_current_time_is_iso_utc(stack: Stack) -> None:
    body = httpx.get(f"{stack.api_url}/api/current-time", timeout=5).json()
    assert body["time"].endswith("Z")


def test_health_reports_redis_workers_and_simulator(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/api/health", timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["redis"]["ok"] and body["workers"]["ok"]
    assert body["llm"]["mode"] == "simulator"


def test_cancelling_a_middle_job_keeps_the_order(stack: Stack, conversation_id: str) -> None:
    first = stack.submit("いち #sim:sleep=1", conversation_id=conversation_id)
    middle = stack.submit("に", conversation_id=conversation_id)
    last = stack.submit(f"さん {conversation_id}", conversation_id=conversation_id)
    r = httpx.post(f"{stack.api_url}/api/jobs/{middle['id']}/cancel", timeout=5)
    assert r.status_code == 200
    one, three = stack.wait_job(first["id"]), stack.wait_job(last["id"])
    assert one["status"] == three["status"] == "completed"
    assert three["started_at"] >= one["completed_at"]
    body = stack.sim_requests_containing(f"さん {conversation_id}")[-1]
    texts = [p["text"] for c in body["contents"] for p in c["parts"]]
    assert one["reply"] in texts  # the third saw the first's reply
