"""One input contract: raising MYSISTERDB_MAX_MESSAGE_CHARS above 8000 raises it in the
service, the OpenAPI document and the page alike (nothing restates the old 8000)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from core import contract
from mysisterdb.redis_server import RedisServer
from tests.conftest import own_stack
from tests.procs import Stack

LIMITS_DB = 13  # databases of the shared test redis-server: grep "_DB = " tests/
RAISED = 9000


@pytest.fixture(scope="module")
def raised(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=LIMITS_DB, name="limits", extra={
        "MYSISTERDB_MAX_MESSAGE_CHARS": str(RAISED),
        "MYSISTERDB_MAX_CONTEXT_TOKENS": "20000"})  # room for the long message's tokens


def test_a_message_over_8000_chars_is_accepted_when_the_setting_allows_it(raised: Stack) -> None:
    long = "ab " * 2900  # 8700 characters, ~2900 tokens
    job = raised.wait_job(raised.submit(long.strip(), conversation_id="long")["id"])
    assert job["status"] == "completed"
    too_long = httpx.post(f"{raised.api_url}/api/chat",
                          json={"message": "a" * (RAISED + 1), "conversation_id": "long"},
                          timeout=10)
    assert too_long.status_code == 422
    assert too_long.json()["error"]["code"] == "message_too_large"
    assert str(RAISED) in too_long.json()["error"]["message"]


def test_the_document_and_the_page_state_the_setting(raised: Stack) -> None:
    spec = httpx.get(f"{raised.api_url}/openapi.json", timeout=10).json()
    schemas = spec["components"]["schemas"]
    assert schemas["ChatRequest"]["properties"]["message"]["maxLength"] == RAISED
    assert schemas["EditRequest"]["properties"]["message"]["maxLength"] == RAISED
    page = httpx.get(f"{raised.api_url}/", timeout=10).text
    assert f'data-max-chars="{RAISED}"' in page
    assert f'data-conversation-id="{contract.CONVERSATION_ID}"' in page
