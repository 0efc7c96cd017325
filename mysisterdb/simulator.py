"""An offline stand-in for Gemini that speaks the Generative Language REST protocol.

Both real SDKs are pointed at it, so offline mode and the tests exercise the very code path
production uses. It speaks both streaming wire formats of `:streamGenerateContent`:
a JSON array streamed piece by piece (google-generativeai, `transport="rest"`) and
Server-Sent Events when asked with `?alt=sse` (google-genai). Directives in the last user
message make it misbehave on purpose, in either format:

    #sim:hang            never answers
    #sim:sleep=SECONDS   answers after a delay
    #sim:error=CODE      answers with that HTTP status (429, 500, ...)
    #sim:stall           streams one chunk, then nothing, never ending
    #sim:hold=NAME       streams one chunk, then holds the rest until POST /_sim/release/NAME
                         (or MYSISTERDB_SIM_HOLD_MAX_S passes, 3 s by default); GET
                         /_sim/holds/NAME tells "held", "released", "expired" or "closed"
                         (the caller went away while held), so a test can see a chunk arrive
                         while the stream is still open, and see a cancelled task hang up
    #sim:garbage         answers with a malformed body
    #sim:pace=SECONDS    the whole reply takes that long, its chunks evenly spread (the first
                         after SECONDS/4, like a model that thinks, then streams); 0 answers at
                         once with no gap between chunks (the benchmarks' zero-delay Gemini)

The embedding endpoints (`:embedContent`, `:batchEmbedContents`) answer deterministically:
a hashed bag of character n-grams of the normalized text (see `embed_text`), so texts that
share spelling get similar vectors, plus a small table of concepts (`CONCEPTS`: 誕生日 and
生まれた, ネトフリ and Netflix, doctor and physician ...), so that a paraphrase can be
tested offline. It is a toy: it knows the few synonyms in its table and nothing else, and
carries no meaning beyond them (docs/context.md). They obey the same directives spelled
`#sim-embed:` (so a chat message carrying `#sim:hang` never makes its own embedding hang).

The last 100 request bodies, as received, are at GET /_sim/requests (newest last); GET
/_sim/calls gives each with its path and query (which API version, SSE or not).
Headers are never recorded: they carry the API key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

DIRECTIVES = (r"(hang|stall|garbage|sleep=(\d+(?:\.\d+)?)|error=(\d{3})|hold=([\w-]{1,64})"
              r"|pace=(\d+(?:\.\d+)?))")
DIRECTIVE = re.compile(r"#sim:" + DIRECTIVES)
EMBED_DIRECTIVE = re.compile(r"#sim-embed:" + DIRECTIVES)
HANG_FOREVER_S = 24 * 3600
HOLD_MAX_S = 3.0
CHUNK_GAP_S = 0.02
DEFAULT_EMBED_DIM = 256
MAX_EMBED_DIM = 3072
STATUS_NAMES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
GARBAGE = b"{\"candidates\": [ this is not json"
SSE_MEDIA = "text/event-stream"
# google-generativeai calls v1beta; google-genai calls v1 by default (v1beta when asked).
API_VERSIONS = ("v1", "v1beta")


def last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents") or []):
        if content.get("role", "user") == "user":
            return content_text(content)
    return ""


def seed_of(body: Any) -> int:
    config = body.get("generationConfig") if isinstance(body, dict) else None
    seed = config.get("seed") if isinstance(config, dict) else None
    return int(seed) if isinstance(seed, int) and seed > 0 else 0


def content_text(content: dict[str, Any] | None) -> str:
    return "".join(p.get("text", "") for p in (content or {}).get("parts") or [])


# Gemini samples: the same request asked again answers differently. The simulator is
# deterministic, so it varies by the request's `generationConfig.seed` (a regenerate sends
# one of its own): no seed, the one reply tests know; a seed, another opener and a mark.
OPENERS = ("えへへ、お兄ちゃん！", "うーんとね、お兄ちゃん。", "わぁ、お兄ちゃん！", "ふふっ、お兄ちゃん♪",
           "あのね、お兄ちゃん。")


def reply_chunks(text: str, *, variant: int = 0) -> list[str]:
    """A short in-character reply, cut into a few stream chunks; the same for the same
    request, another `variant` for the same request asked again."""
    topic = DIRECTIVE.sub("", text).strip().replace("\n", " ")[:24] or "それ"
    opener = (OPENERS[variant % len(OPENERS)] + f"（#{variant % 10_000}）" if variant
              else OPENERS[0])
    return [
        opener,
        f"「{topic}」のことだね。",
        "しぃは今オフラインのシミュレーターだから、",
        "くわしいことは答えられないけど、ちゃんと聞いてるよ♪",
    ]


def chunk_payload(text: str, *, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                 "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "modelVersion": "mysisterdb-simulator"}


def error_response(code: int) -> JSONResponse:
    status = STATUS_NAMES.get(code, "UNKNOWN")
    return JSONResponse(status_code=code, content={"error": {
        "code": code, "message": f"simulated error {code}", "status": status}})


def sse_frame(data: bytes) -> bytes:
    return b"data: " + data + b"\r\n\r\n"


def array_frame(data: bytes, index: int) -> bytes:
    return (b"[" if index == 0 else b",\r\n") + data


async def stream_body(chunks: list[str], *, sse: bool,
                      after_first: Callable[[], Awaitable[None]] | None = None,
                      pace_s: float | None = None) -> AsyncIterator[bytes]:
    """The reply as a JSON array streamed piece by piece, or as one SSE event per chunk.
    Chunks are CHUNK_GAP_S apart, or `pace_s` / len(chunks) apart starting after that long."""
    gap_s = CHUNK_GAP_S if pace_s is None else pace_s / len(chunks)
    if pace_s:
        await asyncio.sleep(gap_s)
    for i, text in enumerate(chunks):
        data = json.dumps(chunk_payload(text, last=i == len(chunks) - 1),
                          ensure_ascii=False).encode()
        yield sse_frame(data) if sse else array_frame(data, i)
        if i == 0 and after_first is not None:
            await after_first()
        if gap_s and i < len(chunks) - 1:
            await asyncio.sleep(gap_s)
    if not sse:
        yield b"]"


def pace_of(match: re.Match[str] | None) -> float | None:
    return float(match.group(5)) if match is not None and match.group(5) else None


@dataclass
class Hold:
    """A stream paused after its first chunk until a test releases it (or it expires)."""

    event: asyncio.Event
    state: str = "held"


class Holds:
    def __init__(self, *, max_s: float = HOLD_MAX_S) -> None:
        self._holds: dict[str, Hold] = {}
        self.max_s = max_s

    def open(self, name: str) -> Hold:
        # Opened before the first chunk is sent: whoever reads that chunk sees it "held".
        hold = self._holds[name] = Hold(event=asyncio.Event())
        return hold

    async def wait(self, hold: Hold) -> None:
        try:
            await asyncio.wait_for(hold.event.wait(), timeout=self.max_s)
        except TimeoutError:
            hold.state = "expired"
        except asyncio.CancelledError:
            # Starlette cancels a streaming response when its client disconnects: the only
            # outside proof that a cancelled task really hung up on the model.
            hold.state = "closed"
            raise

    def release(self, name: str) -> str:
        hold = self._holds.get(name)
        if hold is None:
            raise HTTPException(status_code=404, detail=f"no stream held as {name}")
        if hold.state == "held":
            hold.state = "released"
            hold.event.set()
        return hold.state

    def state(self, name: str) -> str:
        hold = self._holds.get(name)
        return hold.state if hold else "unknown"


def normalize_for_embedding(text: str) -> str:
    """NFKC (full/half width), case folded, punctuation and spacing collapsed to one space."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", folded).split())


def ngrams(text: str) -> list[str]:
    """Character bigrams and trigrams of each word, padded so word edges count too.
    Japanese has no spaces: a sentence is one long word, cut into overlapping 2- and 3-grams."""
    grams: list[str] = []
    for word in text.split():
        padded = f" {word} "
        for n in (2, 3):
            grams.extend(padded[i:i + n] for i in range(len(padded) - n + 1))
    return grams


# The simulator's whole "meaning": surface forms (normalized: NFKC, case folded) that name
# the same concept.  Written for the tests and the recall benchmark's paraphrases, and a few
# more of the same kind; any pair not listed here is a stranger to it.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "birthday": ("誕生日", "生まれ", "生年月日", "birthday", "born"),
    "netflix": ("netflix", "ネトフリ", "ネットフリックス"),
    "car-inspection": ("車検", "車の点検", "車の検査"),
    "doctor": ("doctor", "physician", "医者", "医師", "お医者さん"),
    "coffee": ("coffee", "caffeine", "コーヒー", "カフェイン"),
    "remote-work": ("リモートワーク", "在宅勤務", "テレワーク", "remote work", "work from home"),
    "part-time-job": ("アルバイト", "バイト"),
    "boss": ("ボス", "店長", "上司", "boss", "manager"),
    "quit": ("辞める", "やめる", "辞め", "退職", "quit", "resign"),
    "dentist": ("歯医者", "歯科", "dentist"),
    "move-house": ("引っ越", "転居", "move house", "moving"),
}
# Concepts carry this share of a vector's energy whatever the text's length: two texts on
# the same concept are close (cosine ~0.7) even when they share no character.
CONCEPT_SHARE = 0.7


def concepts_of(normalized: str) -> list[str]:
    return [name for name, forms in CONCEPTS.items() if any(f in normalized for f in forms)]


def hashed_index(feature: str, dim: int) -> tuple[int, float]:
    """blake2b, not hash(): Python's hash is salted per process, and vectors must be stable."""
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little") % dim, 1.0 if digest[4] & 1 else -1.0


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def embed_text(text: str, dim: int = DEFAULT_EMBED_DIM) -> list[float]:
    """The feature-hashing trick: each n-gram adds ±1 at a hashed index, each concept of the
    table a fixed share of the whole; L2-normalized."""
    normalized = normalize_for_embedding(text)
    grams = [0.0] * dim
    for gram in ngrams(normalized):
        index, sign = hashed_index(gram, dim)
        grams[index] += sign
    found = concepts_of(normalized)
    if not found:
        return unit(grams)
    meaning = [0.0] * dim
    for name in found:
        index, sign = hashed_index("concept:" + name, dim)
        meaning[index] += sign
    share = math.sqrt(CONCEPT_SHARE)
    rest = math.sqrt(1.0 - CONCEPT_SHARE)
    return unit([share * m + rest * g for m, g in zip(unit(meaning), unit(grams), strict=True)])


def embed_request(request: dict[str, Any]) -> list[float]:
    dim = request.get("outputDimensionality") or DEFAULT_EMBED_DIM
    if not 1 <= int(dim) <= MAX_EMBED_DIM:
        raise HTTPException(status_code=400, detail=f"outputDimensionality {dim} out of range")
    return embed_text(content_text(request.get("content")), int(dim))


async def misbehave(match: re.Match[str] | None, *, sse: bool) -> Response | None:
    """Apply hang, sleep, error and garbage; None when the normal answer should follow."""
    if match is None:
        return None
    if match.group(1) == "hang":
        await asyncio.sleep(HANG_FOREVER_S)
    if match.group(2):
        await asyncio.sleep(float(match.group(2)))
    if match.group(3):
        return error_response(int(match.group(3)))
    if match.group(1) == "garbage":
        body = sse_frame(GARBAGE) if sse else GARBAGE
        return Response(content=body, status_code=200,
                        media_type=SSE_MEDIA if sse else "application/json")
    return None


class Simulator:
    """The endpoints' state: the last 100 requests and the held streams."""

    def __init__(self, *, hold_max_s: float = HOLD_MAX_S) -> None:
        self.received: deque[dict[str, Any]] = deque(maxlen=100)
        self.holds = Holds(max_s=hold_max_s)

    async def read_body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.received.append({"path": request.url.path, "query": request.url.query,
                              "body": body})
        return body

    def after_first(self, match: re.Match[str] | None) -> Callable[[], Awaitable[None]] | None:
        if match is None:
            return None
        if match.group(1) == "stall":
            return lambda: asyncio.sleep(HANG_FOREVER_S)
        if match.group(4):
            hold = self.holds.open(match.group(4))
            return lambda: self.holds.wait(hold)
        return None

    async def answer(self, request: Request, *, stream: bool) -> Response:
        body = await self.read_body(request)
        text = last_user_text(body) if isinstance(body, dict) else ""
        match = DIRECTIVE.search(text)
        sse = stream and request.query_params.get("alt") == "sse"
        failure = await misbehave(match, sse=sse)
        if failure is not None:
            return failure
        chunks, pace_s = reply_chunks(text, variant=seed_of(body)), pace_of(match)
        if not stream:
            if pace_s:
                await asyncio.sleep(pace_s)
            return JSONResponse(chunk_payload("".join(chunks), last=True))
        return StreamingResponse(stream_body(chunks, sse=sse, after_first=self.after_first(match),
                                             pace_s=pace_s),
                                 media_type=SSE_MEDIA if sse else "application/json")

    async def embed(self, request: Request, *, batch: bool) -> Response:
        body = await self.read_body(request)
        if not isinstance(body, dict):
            return error_response(400)
        items = (body.get("requests") or []) if batch else [body]
        text = " ".join(content_text(item.get("content")) for item in items)
        failure = await misbehave(EMBED_DIRECTIVE.search(text), sse=False)
        if failure is not None:
            return failure
        vectors = [{"values": embed_request(item)} for item in items]
        return JSONResponse({"embeddings": vectors} if batch else {"embedding": vectors[0]})

    async def release(self, name: str) -> dict[str, str]:
        return {"name": name, "state": self.holds.release(name)}

    async def hold_state(self, name: str) -> dict[str, str]:
        return {"name": name, "state": self.holds.state(name)}

    async def model_info(self, model: str) -> dict[str, Any]:
        # What /api/health asks to see whether the endpoint answers (no generation).
        return {"name": f"models/{model}", "displayName": f"{model} (simulator)",
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]}

    async def requests_seen(self) -> list[Any]:
        return [call["body"] for call in self.received]

    async def calls_seen(self) -> list[dict[str, Any]]:
        return list(self.received)

    async def health(self) -> dict[str, str]:
        return {"status": "ok", "mode": "simulator"}


def create_app(*, hold_max_s: float = HOLD_MAX_S) -> FastAPI:
    app = FastAPI(title="MySisterDB Gemini simulator")
    sim = Simulator(hold_max_s=hold_max_s)
    for version in API_VERSIONS:
        models = f"/{version}/models/{{model}}"
        app.add_api_route(models, sim.model_info, methods=["GET"])
        app.add_api_route(f"{models}:generateContent", partial(sim.answer, stream=False),
                          methods=["POST"])
        app.add_api_route(f"{models}:streamGenerateContent", partial(sim.answer, stream=True),
                          methods=["POST"])
        app.add_api_route(f"{models}:embedContent", partial(sim.embed, batch=False),
                          methods=["POST"])
        app.add_api_route(f"{models}:batchEmbedContents", partial(sim.embed, batch=True),
                          methods=["POST"])
    app.add_api_route("/_sim/release/{name}", sim.release, methods=["POST"])
    app.add_api_route("/_sim/holds/{name}", sim.hold_state, methods=["GET"])
    app.add_api_route("/_sim/requests", sim.requests_seen, methods=["GET"])
    app.add_api_route("/_sim/calls", sim.calls_seen, methods=["GET"])
    app.add_api_route("/_sim/health", sim.health, methods=["GET"])
    return app
