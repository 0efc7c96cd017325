"""What a prompt costs in writes, against a real stack (issue 21): the job record is written a
bounded number of times, the coalesced text still reaches a follower whole and in order, a
failure after coalesced chunks keeps every chunk, and a reply that leaves nothing to fold
queues no summary.

The stack is its own: the text is written at most every 5 s here (MYSISTERDB_STREAM_WRITE_
INTERVAL_S), so that which chunks wait is decided by the test's pacing, never by the load of
the machine; Gemini's read timeout is 3 s so that a paced stream is not cut by it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from context.redis_store import RedisHistoryStore
from core import keys
from mysisterdb.redis_server import RedisServer
from mysisterdb.simulator import reply_chunks
from tests.conftest import db_url, own_stack
from tests.procs import Stack, wait_for

COST_DB = 14  # databases of the shared test redis-server: grep "_DB = " tests/
INTERVAL_S = 5
# The claim (it starts load_history), load and build ended -> generate with the first chunk,
# the end (generate finished, save, reply, the whole text): issue 21 counted 11 to 13 before.
WRITES_PER_PROMPT = 3


@pytest.fixture(scope="module")
def cost_stack(redis_server: RedisServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from own_stack(redis_server, tmp_path_factory, db=COST_DB, name="cost", extra={
        "MYSISTERDB_STREAM_WRITE_INTERVAL_S": str(INTERVAL_S),
        "MYSISTERDB_GEMINI_TIMEOUT": "3"})


@dataclass
class Monitor:
    """Every command the redis-server runs while it is open (MONITOR, in a thread)."""

    url: str
    commands: list[list[str]] = field(default_factory=list)
    _marker: str = field(default_factory=lambda: f"monitor-end-{uuid.uuid4().hex}")
    _done: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "MONITOR did not start"
        return self

    def __exit__(self, *_: object) -> None:
        # A marker of our own, sent after everything the test waited for: MONITOR shows
        # commands in the order the server ran them, so the thread has seen every earlier
        # one once it reads the marker. (Stopping at the next command read lost the job's
        # last writes when the thread lagged behind: seen on a loaded box. A read that times
        # out closes redis-py's connection, so the read blocks until the marker.)
        redis.Redis.from_url(self.url, socket_timeout=5).echo(self._marker)
        self._thread.join(10)
        assert self._done.is_set(), "MONITOR never showed the marker"

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=60)
        with client.monitor() as monitor:
            self._ready.set()
            while True:
                words = str(monitor.next_command()["command"]).split(" ")
                if words[:2] == ["ECHO", self._marker]:
                    break
                self.commands.append(words)
        self._done.set()
        client.close()

    def touching(self, key: str, *verbs: str) -> list[list[str]]:
        return [c for c in self.commands
                if len(c) > 1 and c[0].upper() in verbs and c[1].strip('"') == key]


def test_a_prompt_writes_its_job_record_a_bounded_number_of_times(
        cost_stack: Stack, redis_server: RedisServer, conversation_id: str) -> None:
    text = "#sim:pace=0 いっぱい話して"
    with Monitor(redis_server.url) as seen:
        job = cost_stack.wait_job(cost_stack.submit(text, conversation_id=conversation_id)["id"])
    assert job["status"] == "completed"
    writes = seen.touching(keys.job(job["id"]), "SET")
    # The submit's SET stores the record; every later one is a write of the running job.
    assert len(writes) - 1 == job["sequence"] == WRITES_PER_PROMPT, job
    # Nothing the followers read was lost by folding: every step done, with times and detail,
    # and the text is the whole reply.
    assert [s["status"] for s in job["steps"]] == ["completed"] * 4
    assert all(s["started_at"] and s["completed_at"] and s["detail"] for s in job["steps"])
    assert job["partial_reply"] == job["reply"] == "".join(reply_chunks(text))


def sse_texts(stack: Stack, job_id: str) -> list[tuple[int, str, str]]:
    """(event id, status, text so far) of every event of the job's stream, to its end."""
    seen = []
    with httpx.stream("GET", f"{stack.api_url}/api/jobs/{job_id}/events", timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                job = json.loads(line[5:])
                seen.append((job["sequence"], job["status"], job["partial_reply"]))
    return seen


def test_a_follower_sees_the_coalesced_text_whole_and_in_order(
        cost_stack: Stack, conversation_id: str) -> None:
    # Chunks 0.5 s apart (2 s / 4 chunks): the first is written at once, the other three wait
    # for the interval and reach the record with the end.
    text = "#sim:pace=2 ゆっくり続けてね"
    job = cost_stack.submit(text, conversation_id=conversation_id)
    events = sse_texts(cost_stack, job["id"])
    chunks, whole = reply_chunks(text), "".join(reply_chunks(text))
    ids = [e[0] for e in events]
    assert ids == sorted(set(ids)) and events[-1][1] == "completed"
    texts = [e[2] for e in events]
    # Each event's text extends the one before: read as pieces, every piece once, in order.
    before = ["", *texts[:-1]]
    assert all(now.startswith(was) for was, now in zip(before, texts, strict=True))
    pieces = [now[len(was):] for was, now in zip(before, texts, strict=True) if now != was]
    assert "".join(pieces) == whole and pieces[0] == chunks[0]
    assert [t for _, status, t in events if status == "in_progress" and t] == [chunks[0]]
    assert cost_stack.job(job["id"])["reply"] == whole


def test_a_failure_after_coalesced_chunks_keeps_the_whole_text(
        cost_stack: Stack, conversation_id: str) -> None:
    # Chunks at 1.5 s, 3 s, 4.5 s...: the second arrives inside the interval and waits; the
    # soft limit (4 s) ends the job before the third. The waiting chunk is written first.
    text = "#sim:pace=6 とちゅうで止まるよ"
    done = cost_stack.wait_job(cost_stack.submit(text, conversation_id=conversation_id)["id"],
                               timeout_s=20)
    assert (done["status"], done["error"]["code"]) == ("incomplete", "timeout"), done
    chunks = reply_chunks(text)
    assert done["partial_reply"].startswith(chunks[0] + chunks[1]), done["partial_reply"]
    assert "".join(chunks).startswith(done["partial_reply"])


def test_a_reply_that_leaves_nothing_to_fold_queues_no_summary(
        cost_stack: Stack, redis_server: RedisServer, conversation_id: str) -> None:
    flag = keys.conv_summarizing(conversation_id)
    with Monitor(redis_server.url) as seen:
        # Three exchanges fit the recent window (MYSISTERDB_PRESERVE_RECENT, 3).
        for i in range(3):
            job = cost_stack.submit(f"#sim:pace=0 みじかい話{i}", conversation_id=conversation_id)
            assert cost_stack.wait_job(job["id"])["status"] == "completed"
        short = len(seen.touching(flag, "SET"))
        # The fourth pushes the first exchange out of the window: now a fold is due.
        job = cost_stack.submit("#sim:pace=0 よっつめ", conversation_id=conversation_id)
        assert cost_stack.wait_job(job["id"])["status"] == "completed"
        # The summary is queued after the end is written, which a follower may see first.
        wait_for(lambda: bool(seen.touching(flag, "SET")), timeout_s=10,
                 what="the fourth reply to queue its summary")
    assert short == 0
    assert len(seen.touching(flag, "SET")) == 1
    store = RedisHistoryStore(redis.Redis.from_url(db_url(redis_server, COST_DB),
                                                   socket_timeout=5), key_of=keys.conv_key)
    wait_for(lambda: store.get_summary(conversation_id) is not None, timeout_s=15,
             what="the summary the fourth reply queued")


def test_a_reply_whose_next_turn_is_already_stored_queues_the_fold_it_makes_due(
        cost_stack: Stack, redis_server: RedisServer, conversation_id: str) -> None:
    # The build of the third prompt reads two exchanges: by themselves, with the third, they
    # fit the recent window. But the fourth message is stored (submitted while the third
    # ran, then cancelled): once the third reply is saved, the window is the last three
    # exchanges from the fourth message, so the first exchange has left it and a fold is due.
    for i in range(2):
        job = cost_stack.submit(f"#sim:pace=0 みじかい話{i}", conversation_id=conversation_id)
        assert cost_stack.wait_job(job["id"])["status"] == "completed"
    third = cost_stack.submit("#sim:pace=2 みっつめ", conversation_id=conversation_id)
    cost_stack.wait_job(third["id"], until=lambda j: j["status"] == "in_progress")
    fourth = cost_stack.submit("#sim:pace=0 よっつめ", conversation_id=conversation_id)
    cancelled = httpx.post(f"{cost_stack.api_url}/api/jobs/{fourth['id']}/cancel", timeout=5)
    assert cancelled.json()["status"] == "cancelled", cancelled.text
    assert cost_stack.wait_job(third["id"])["status"] == "completed"
    store = RedisHistoryStore(redis.Redis.from_url(db_url(redis_server, COST_DB),
                                                   socket_timeout=5), key_of=keys.conv_key)
    wait_for(lambda: store.get_summary(conversation_id) is not None, timeout_s=15,
             what="the summary the third reply made due")
    assert store.get_summary(conversation_id).covers_up_to_seq == 2  # type: ignore[union-attr]


def test_a_failure_inside_the_build_names_the_build(
        cost_stack: Stack, redis_server: RedisServer, conversation_id: str) -> None:
    # load_history's end is written with build_context's; a build that fails (here: a
    # summary stored without its fields) still leaves load_history completed and
    # build_context failed, as when each step had its own write.
    client = redis.Redis.from_url(db_url(redis_server, COST_DB), socket_timeout=5)
    store = RedisHistoryStore(client, key_of=keys.conv_key)
    client.hset(store.keys(conversation_id).summary(), mapping={"broken": "1"})
    job = cost_stack.wait_job(cost_stack.submit("#sim:pace=0 こわれた要約",
                                                conversation_id=conversation_id)["id"])
    assert job["status"] == "failed", job
    steps = {s["name"]: s for s in job["steps"]}
    assert steps["load_history"]["status"] == "completed" and steps["load_history"]["detail"]
    assert steps["build_context"]["status"] == "failed", job["steps"]
    assert steps["generate"]["status"] == "skipped"
