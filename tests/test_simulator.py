"""The Gemini simulator's own behaviour, in process (the stack tests drive it through the SDK)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mysisterdb.simulator import create_app, reply_chunks

URL = "/v1beta/models/gemini-1.5-flash:streamGenerateContent"


def body(text: str) -> dict[str, object]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def test_streams_an_in_character_reply_in_several_chunks() -> None:
    with TestClient(create_app()) as client:
        r = client.post(URL, json=body("枡元といえば？ｗ"), headers={"x-goog-api-key": "k"})
    chunks = json.loads(r.text)
    assert r.status_code == 200 and len(chunks) == len(reply_chunks("x")) >= 3
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert "お兄ちゃん" in text and "枡元といえば？ｗ" in text
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_error_and_garbage_directives() -> None:
    with TestClient(create_app()) as client:
        error = client.post(URL, json=body("#sim:error=429"))
        garbage = client.post(URL, json=body("#sim:garbage"))
    assert error.status_code == 429 and error.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert garbage.status_code == 200
    with pytest.raises(ValueError):
        json.loads(garbage.text)


def test_keeps_the_last_100_bodies_newest_last_and_never_headers() -> None:
    with TestClient(create_app()) as client:
        plain = URL.replace(":streamGenerateContent", ":generateContent")
        for i in range(105):
            client.post(plain, json=body(f"n{i}"), headers={"x-goog-api-key": "secret-key"})
        seen = client.get("/_sim/requests").json()
    assert len(seen) == 100
    assert seen[0] == body("n5") and seen[-1] == body("n104")
    assert "secret-key" not in json.dumps(seen)
