"""The Gemini simulator's own behaviour, in process (the stack tests drive it through the SDK)."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from mysisterdb.simulator import create_app, embed_text, reply_chunks

URL = "/v1beta/models/gemini-3.5-flash:streamGenerateContent"


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


def sse_events(text: str) -> list[dict[str, object]]:
    frames = [f for f in text.split("\r\n\r\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    return [json.loads(f[len("data: "):]) for f in frames]


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_streams_server_sent_events_when_asked_with_alt_sse(version: str) -> None:
    url = f"/{version}/models/gemini-3.5-flash:streamGenerateContent?alt=sse"
    with TestClient(create_app()) as client:
        r = client.post(url, json=body("こんにちは"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]  # type: ignore[index]
    assert texts == reply_chunks("こんにちは")
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"  # type: ignore[index]


def test_sse_error_and_garbage_directives() -> None:
    url = URL + "?alt=sse"
    with TestClient(create_app()) as client:
        error = client.post(url, json=body("#sim:error=503"))
        garbage = client.post(url, json=body("#sim:garbage"))
    assert error.status_code == 503 and error.json()["error"]["status"] == "UNAVAILABLE"
    assert garbage.status_code == 200 and garbage.text.startswith("data: ")
    with pytest.raises(ValueError):
        sse_events(garbage.text)


def test_hold_state_is_unknown_until_a_stream_holds_and_release_needs_one() -> None:
    with TestClient(create_app()) as client:
        assert client.get("/_sim/holds/x").json()["state"] == "unknown"
        assert client.post("/_sim/release/x").status_code == 404


EMBED = "/v1beta/models/gemini-embedding-001"


def embed_body(text: str, **extra: object) -> dict[str, object]:
    return {"content": {"parts": [{"text": text}]}, **extra}


def test_embed_content_and_batch_answer_the_same_deterministic_vectors() -> None:
    with TestClient(create_app()) as client:
        one = client.post(f"{EMBED}:embedContent", json=embed_body("誕生日は五月")).json()
        batch = client.post(f"{EMBED}:batchEmbedContents", json={"requests": [
            embed_body("誕生日は五月", outputDimensionality=32), embed_body("車検は来週")]}).json()
    assert one["embedding"]["values"] == embed_text("誕生日は五月", 256)
    assert [len(e["values"]) for e in batch["embeddings"]] == [32, 256]
    assert batch["embeddings"][0]["values"] == embed_text("誕生日は五月", 32)


def test_embedding_is_normalized_and_similar_texts_are_close() -> None:
    base = embed_text("I parked the car on level B3")
    assert math.isclose(sum(v * v for v in base), 1.0)
    near = embed_text("I PARKED the car on level B3!")  # case and punctuation folded
    width = embed_text("Ｉ ｐａｒｋｅｄ the car on level Ｂ３")  # full-width folded
    similar = embed_text("where did I park my car?")
    other = embed_text("お兄ちゃんの誕生日は五月五日")
    assert near == base and width == base
    assert dot(base, similar) > 0.3 > abs(dot(base, other))
    assert embed_text("") == [0.0] * 256


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cosine(a: str, b: str) -> float:
    return sum(x * y for x, y in zip(embed_text(a), embed_text(b), strict=True))


def test_embedding_knows_its_concept_table_and_nothing_more() -> None:
    # 生まれた日 and 誕生日 share no character n-gram, only the table's concept.
    assert _cosine("生まれた日っていつだっけ？", "誕生日は8月3日なんだ") > 0.6
    assert _cosine("what did the physician say?", "my doctor told me") > 0.6
    assert _cosine("ネトフリで毎晩ドラマ", "Netflixの料金") > 0.6
    # A paraphrase outside the table is a stranger: no meaning beyond it.
    assert _cosine("生まれた日っていつだっけ？", "今日はいい天気だね") < 0.1
    assert _cosine("where did I put the automobile?", "I parked the car") < 0.6


def test_embed_obeys_only_its_own_directives() -> None:
    with TestClient(create_app()) as client:
        failed = client.post(f"{EMBED}:embedContent", json=embed_body("#sim-embed:error=429"))
        chat_directive = client.post(f"{EMBED}:batchEmbedContents",
                                     json={"requests": [embed_body("#sim:error=500")]})
        too_wide = client.post(f"{EMBED}:embedContent",
                               json=embed_body("x", outputDimensionality=5000))
    assert failed.status_code == 429
    assert chat_directive.status_code == 200  # a chat message's #sim: never breaks its embedding
    assert too_wide.status_code == 400


def test_calls_record_path_and_query_never_headers() -> None:
    with TestClient(create_app()) as client:
        client.post(URL + "?alt=sse", json=body("a"), headers={"x-goog-api-key": "secret-key"})
        [call] = client.get("/_sim/calls").json()
    assert call == {"path": URL, "query": "alt=sse", "body": body("a")}
    assert "secret-key" not in json.dumps(call)


def test_pace_spreads_the_whole_reply_over_that_time_and_zero_answers_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from mysisterdb import simulator

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(seconds: float, *args: object) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(simulator.asyncio, "sleep", recorded)
    n = len(reply_chunks("x"))
    with TestClient(create_app()) as client:
        paced = client.post(URL, json=body("#sim:pace=2 ゆっくり"))
        assert slept == pytest.approx([2 / n] * n)  # the first after 2/n s, the last at 2 s
        slept.clear()
        instant = client.post(URL, json=body("#sim:pace=0 すぐに"))
        assert slept == []
        plain = client.post(URL, json=body("ふつう"))
        assert slept == [simulator.CHUNK_GAP_S] * (n - 1)
    for r in (paced, instant, plain):
        assert r.status_code == 200 and len(json.loads(r.text)) == n
