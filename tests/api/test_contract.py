"""The typed contract: /openapi.json describes what the API really answers.

Schemathesis generates requests for every operation (a bounded number each) against the real
stack and checks that no answer is a server error and that every status, content type and
body is the documented one; real answers of the scenarios a client goes through are checked
against the same document.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis

from mysisterdb.redis_server import RedisServer
from tests.conftest import own_stack
from tests.procs import Stack

CONTRACT_DB = 3  # schemathesis submits many prompts: its own stack, so no one waits behind them
SCHEMATHESIS_EXAMPLES = 25  # per operation and phase: the whole run stays near a minute
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,negative_data_rejection")


@pytest.fixture(scope="module")
def fuzzed_stack(redis_server: RedisServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=CONTRACT_DB, name="contract")


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
        fuzzed_stack: Stack, tmp_path: Path) -> None:
    # One worker: with two threads, hypothesis's ast.parse of a filter lambda hit CPython
    # 3.11's "AST constructor recursion depth mismatch" (a thread-safety bug of the parser,
    # gh-106905) and schemathesis reported a runtime error, not a finding.
    run = subprocess.run(
        [str(Path(sys.executable).with_name("st")), "run", f"{fuzzed_stack.api_url}/openapi.json",
         "--checks", CHECKS, "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--workers", "1",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "45",
         "--generation-database", "none", "--no-color", "--seed", "9",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout or " passed" in run.stdout, run.stdout[-3000:]


@pytest.fixture(scope="module")
def contract(stack: Stack) -> Any:
    return schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")


def check(contract: Any, path: str, method: str, response: httpx.Response) -> httpx.Response:
    contract[path][method].validate_response(response)
    return response


def test_real_answers_match_the_document(stack: Stack, contract: Any,
                                         conversation_id: str) -> None:
    api, cid = stack.api_url, conversation_id
    chat = "/api/chat"
    job_path, jobs = "/api/jobs/{job_id}", f"{api}/api/jobs"
    submitted = check(contract, chat, "POST", httpx.post(
        api + chat, json={"message": "契約の確認", "conversation_id": cid}, timeout=5)).json()
    check(contract, job_path, "GET", httpx.get(f"{jobs}/{submitted['id']}", timeout=5))
    done = stack.wait_job(submitted["id"])
    check(contract, job_path, "GET", httpx.get(
        f"{jobs}/{done['id']}", params={"wait": 5, "after": 0}, timeout=10))
    check(contract, "/api/jobs/{job_id}/cancel", "POST",
          httpx.post(f"{jobs}/{done['id']}/cancel", timeout=5))  # 409
    failed = stack.wait_job(stack.submit("#sim:error=500", conversation_id=cid)["id"])
    retried = check(contract, "/api/jobs/{job_id}/retry", "POST",
                    httpx.post(f"{jobs}/{failed['id']}/retry", timeout=5)).json()
    check(contract, "/api/jobs/{job_id}/cancel", "POST",
          httpx.post(f"{jobs}/{retried['id']}/cancel", timeout=5))
    for path, url in [("/api/conversations/{conversation_id}/messages",
                       f"{api}/api/conversations/{cid}/messages"),
                      ("/api/conversations", f"{api}/api/conversations"),
                      ("/api/queue", f"{api}/api/queue"),
                      ("/api/incidents", f"{api}/api/incidents"),
                      ("/api/health", f"{api}/api/health"),
                      ("/api/current-time", f"{api}/api/current-time"),
                      (job_path, f"{jobs}/{'0' * 32}"),  # 404
                      (job_path, f"{jobs}/nope")]:  # 422
        check(contract, path, "GET", httpx.get(url, timeout=5))
    check(contract, "/api/conversations/{conversation_id}", "DELETE",
          httpx.delete(f"{api}/api/conversations/{cid}", timeout=5))
    check(contract, "/api/conversations/{conversation_id}", "DELETE",
          httpx.delete(f"{api}/api/conversations/{cid}", timeout=5))  # 404


def test_every_error_status_is_documented_with_the_error_body(stack: Stack) -> None:
    spec = httpx.get(f"{stack.api_url}/openapi.json", timeout=5).json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            statuses = {int(s) for s in operation["responses"] if s != "default"}
            if path not in ("/api/current-time", "/api/health", "/api/jobs/{job_id}/events"):
                assert {422, 503, 504} <= statuses, (method, path, statuses)
            for status in statuses - {200, 202, 204} - ({503} if path == "/api/health" else set()):
                ref = operation["responses"][str(status)]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert {"sequence", "steps", "partial_reply", "error", "retry_of", "turn"} <= set(job)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


BAD = [
    ({"message": "あ" * 8001}, "message_too_large", "メッセージが長すぎます（最大 8000 文字）。"),
    ({"message": "   "}, "invalid_input", "メッセージが空です。何か書いてから送ってください。"),
    ({}, "invalid_input", "メッセージ（message）がありません。"),
    ({"message": 42}, "invalid_input", "メッセージ（message）は文字列で指定してください。"),
    ({"message": "hi", "conversation_id": "bad id!"}, "invalid_input",
     "会話 ID（conversation_id）の形式が正しくありません（英数字・-・_ の1〜64文字）。"),
    ([1, 2], "invalid_input", "リクエストの本文は JSON オブジェクト（{…}）にしてください。"),
]


@pytest.mark.parametrize(("body", "code", "message"), BAD, ids=[c for _, c, _ in BAD])
def test_validation_errors_say_what_is_wrong_in_words(stack: Stack, body: Any, code: str,
                                                      message: str) -> None:
    r = httpx.post(f"{stack.api_url}/api/chat", json=body, timeout=5)
    assert r.status_code == 422
    assert r.json() == {"error": {"code": code, "message": message}}


def test_malformed_json_is_told_in_words(stack: Stack) -> None:
    r = httpx.post(f"{stack.api_url}/api/chat", content=b'{"message": "hi"',
                   headers={"content-type": "application/json"}, timeout=5)
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "リクエストの本文が JSON として読めません。"


def test_an_idempotency_key_reused_with_another_body_is_422(stack: Stack, stack_redis: redis.Redis,
                                                            conversation_id: str) -> None:
    headers = {"Idempotency-Key": f"k-{conversation_id}"}
    first = stack.wait_job(stack.submit("一回目", conversation_id=conversation_id,
                                        headers=headers)["id"])
    before = stack_redis.zcard(f"msdb:conv:{conversation_id}:messages")
    r = httpx.post(f"{stack.api_url}/api/chat", headers=headers, timeout=5,
                   json={"message": "別の内容", "conversation_id": conversation_id})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in r.json()["error"]["message"]
    assert stack_redis.zcard(f"msdb:conv:{conversation_id}:messages") == before
    again = stack.submit("一回目", conversation_id=conversation_id, headers=headers)
    assert again["id"] == first["id"]
