"""The job record in Redis and its indexes: storage only.

Who may change a job, and to what, is decided by `core.lifecycle`; this module knows
how a record and its indexes are stored and gives the lifecycle (and `check`) the
primitives to read and write them.

Every write is a read-modify-write under WATCH, so the API (cancel), the worker's child
(steps, streamed text), the worker's parent (hard limit, lost child) and the sweep can all
touch a job without losing each other's updates. Each write stamps the record with a fresh
`write_id`, bumps its `sequence` and, in the same transaction, publishes "job_id sequence
record" on `keys.job_changes_channel()`: the API's long-polls and SSE streams wake on it
(a deleted job's is "job_id 0").

A writer that already holds the record as of its last write (the worker's child, from its
claim on) writes without WATCH: one script compares the stored stamp with the one its change
was made on and applies the change only if they are equal (`update(..., known=job)`), one
round trip instead of three (WATCH, GET, MULTI/EXEC). A record changed meanwhile (cancelled,
renumbered) comes back in the script's answer and the change is made again on it, as a
failed WATCH would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import redis
from redis import Redis
from redis.client import Pipeline

from core import keys
from core.errors import NotFound
from core.models import Job, JobStatus
from core.redis_client import MAX_TRANSACTION_ATTEMPTS, TransactionFailed, run_transaction, to_str

T = TypeVar("T")
Mutation = Callable[[Job], None]
AfterWrite = Callable[[Pipeline, Job], object]  # more commands for the same transaction


SCAN_BATCH = 500

# Raise the turn counter, never lower it: a submit may INCR it while we look.
_RAISE_COUNTER_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]); return tonumber(ARGV[1]) end
return cur
"""


# KEYS[1] the job record, KEYS[2] its conversation's line (only with ARGV[2]). ARGV[1] the
# write_id the change was made on; ARGV[2] the job id when it must head its line, else '';
# then the change's commands, each as its number of words and the words. Answers 1 when
# written, 0 when another job heads the line, the record as it is when its stamp is another,
# nil when it is gone. The stamp is found as text: a JSON string escapes its quotes, so
# `"write_id":"<hex>"` can only be the record's own field (pydantic writes it without spaces).
# The commands name keys that are not in KEYS: the store is one Redis (or a Sentinel-managed
# primary), never a cluster.
WRITE_IF_UNCHANGED_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return nil end
if not string.find(raw, '"write_id":"' .. ARGV[1] .. '"', 1, true) then return raw end
if ARGV[2] ~= '' then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if head and head ~= ARGV[2] then return 0 end
end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


# KEYS: a job record, its line; ARGV[1]: a write_id. Whether the record carries that stamp
# (found as text, as above), and the line's first two.
STAMP_AND_LINE_LUA = """
local raw = redis.call('GET', KEYS[1])
local same = 0
if raw and string.find(raw, '"write_id":"' .. ARGV[1] .. '"', 1, true) then same = 1 end
return {same, redis.call('ZRANGE', KEYS[2], 0, 1)}
"""


class Skip(Exception):
    """Raised by a mutation to leave the job as it is."""


class JobStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._write_if_unchanged = client.register_script(WRITE_IF_UNCHANGED_LUA)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    # -- reads --------------------------------------------------------------------------

    def find(self, job_id: str) -> Job | None:
        raw = self._redis.get(keys.job(job_id))
        return Job.model_validate_json(raw) if raw else None

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound("指定されたジョブは見つかりませんでした。")
        return job

    def active_ids(self) -> list[str]:
        return sorted(to_str(v) for v in self._redis.zrange(keys.active_jobs(), 0, -1))

    def running_ids(self) -> list[str]:
        return sorted(to_str(v) for v in self._redis.zrange(keys.running_jobs(), 0, -1))

    def ids_started_before(self, epoch: float) -> list[str]:
        return [to_str(v) for v in self._redis.zrangebyscore(keys.running_jobs(), "-inf", epoch)]

    def ids_created_before(self, epoch: float) -> list[str]:
        return [to_str(v) for v in self._redis.zrangebyscore(keys.active_jobs(), "-inf", epoch)]

    def line(self, conversation_id: str) -> list[str]:
        """The conversation's unfinished jobs, lowest turn (the head) first."""
        return [to_str(v) for v in self._redis.zrange(keys.conv_active(conversation_id), 0, -1)]

    def job_id_for_turn(self, conversation_id: str, turn: int) -> str | None:
        raw = self._redis.hget(keys.conv_jobs(conversation_id), str(turn))
        return to_str(raw) if raw else None

    def outbox_due(self, *, before_epoch: float) -> list[str]:
        return [to_str(v) for v in self._redis.zrangebyscore(keys.outbox(), "-inf", before_epoch)]

    # -- writes (called by the lifecycle) -----------------------------------------------

    @staticmethod
    def create(pipe: Pipeline, job: Job) -> None:
        pipe.set(keys.job(job.id), job.model_dump_json(), ex=keys.job_ttl_s)
        pipe.hset(keys.conv_jobs(job.conversation_id), str(job.turn), job.id)
        pipe.zadd(keys.active_jobs(), {job.id: job.created_at.timestamp()})
        pipe.zadd(keys.conv_active(job.conversation_id), {job.id: job.turn})

    @staticmethod
    def follow_status(pipe: Pipeline, job: Job) -> None:
        """Keep the status indexes in step with the record, in the same transaction."""
        if job.status is not JobStatus.QUEUED:
            pipe.zrem(keys.dispatched(), job.id)
        if job.status is JobStatus.IN_PROGRESS and job.started_at is not None:
            pipe.zadd(keys.running_jobs(), {job.id: job.started_at.timestamp()})
        if job.status.is_final:
            pipe.zrem(keys.active_jobs(), job.id)
            pipe.zrem(keys.running_jobs(), job.id)
            pipe.zrem(keys.conv_active(job.conversation_id), job.id)

    @staticmethod
    def put_in_outbox(pipe: Pipeline, job_id: str, *, at_epoch: float) -> None:
        """Hand a job its turn: to be published, and watched until it starts."""
        pipe.zadd(keys.outbox(), {job_id: at_epoch})
        pipe.zadd(keys.dispatched(), {job_id: at_epoch})

    def sent(self, job_id: str, *, at_epoch: float) -> None:
        """Its message is in the broker: out of the outbox, and the clock for a lost message
        starts again (only while it still waits: XX never re-adds a started job)."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.outbox(), job_id)
            pipe.zadd(keys.dispatched(), {job_id: at_epoch}, xx=True)
            pipe.execute()

    def dispatched_before(self, epoch: float, *, limit: int) -> list[str]:
        return [to_str(v) for v in self._redis.zrangebyscore(keys.dispatched(), "-inf", epoch,
                                                             start=0, num=limit)]

    def forget_dispatch(self, job_id: str) -> None:
        self._redis.zrem(keys.dispatched(), job_id)

    def update(self, job_id: str, mutate: Mutation, *, only_active: bool = True,
               after: AfterWrite | None = None, known: Job | None = None) -> Job | None:
        """Apply `mutate` atomically; None when the job is gone, already final (only_active),
        or the mutation raised Skip. With `known`, the record as this process last wrote or
        read it (it is mutated: use the job returned), in one round trip while nobody else
        wrote it meanwhile; `after` may then queue plain commands only (no EVAL)."""
        key, write_id = keys.job(job_id), uuid.uuid4().hex
        if known is not None:
            return self._update_known(known, mutate, only_active=only_active, after=after,
                                      write_id=write_id)

        def attempt(pipe: Pipeline) -> Job | None:
            pipe.watch(key)
            job = self.read_watched(pipe, job_id)
            if job is None or (only_active and job.status.is_final):
                return None
            try:
                mutate(job)
            except Skip:
                return None
            pipe.multi()
            self.write(pipe, job, write_id=write_id)
            if after is not None:
                after(pipe, job)
            pipe.execute()
            return job

        return run_transaction(self._redis, attempt, what=f"job {job_id}",
                               recover=lambda: self.written(job_id, write_id))

    def _update_known(self, job: Job, mutate: Mutation, *, only_active: bool,
                      after: AfterWrite | None, write_id: str) -> Job | None:
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            if only_active and job.status.is_final:
                return None
            based_on = job.write_id
            try:
                mutate(job)
            except Skip:
                return None
            written = self.write_if_unchanged(job, based_on=based_on, write_id=write_id,
                                              after=after)
            if not isinstance(written, Job):
                return None  # gone (False needs head_of, not given here)
            if written is job:
                return job
            job = written  # changed meanwhile: the change again, on the record as it is
        raise TransactionFailed(f"job {job.id}: no write after {MAX_TRANSACTION_ATTEMPTS} attempts")

    def write_if_unchanged(self, job: Job, *, based_on: str, write_id: str,
                           after: AfterWrite | None = None,
                           head_of: str | None = None) -> Job | None | bool:
        """Write `job` (changed from the record stamped `based_on`) with its indexes and
        `after`'s commands, if the stored record still carries that stamp and, with `head_of`
        (its line's key), the job heads its line. Returns `job` when written, the stored
        record when it carries another stamp, None when it is gone, False when another job
        heads the line."""
        recorder = self._redis.pipeline(transaction=False)  # only collects the commands
        self.write(recorder, job, write_id=write_id)
        if after is not None:
            after(recorder, job)
        words: list[Any] = []
        for command, _options in recorder.command_stack:
            words += [len(command), *command]
        script_keys = [keys.job(job.id), *([head_of] if head_of else [])]
        try:
            answer = self._write_if_unchanged(
                keys=script_keys, args=[based_on, job.id if head_of else "", *words])
        except (redis.ConnectionError, redis.TimeoutError):
            # The reply was lost and the client's own retries failed: applied or not, the
            # stamp tells.
            if self.written(job.id, write_id) is not None:
                return job
            raise
        if answer == 1:
            return job
        if answer == 0:
            return False
        if answer is None:
            return None
        stored = Job.model_validate_json(answer)
        # Our own stamp: applied, its reply lost and the command sent again by the client.
        return job if stored.write_id == write_id else stored

    @staticmethod
    def watch_known(pipe: Pipeline, known: Job) -> tuple[Job | None, list[Any]]:
        """WATCH the record and its line, then one script: is the stored record still
        `known` (its stamp), and the line's first two. `known` when it is (a change after
        the WATCH fails EXEC as usual), else None: the caller reads it."""
        line_key = keys.conv_active(known.conversation_id)
        pipe.watch(keys.job(known.id), line_key)
        same, line = pipe.eval(STAMP_AND_LINE_LUA, 2, keys.job(known.id), line_key,
                               known.write_id)
        return (known if same and not known.status.is_final else None), list(line)

    @staticmethod
    def read_watched(pipe: Pipeline, job_id: str) -> Job | None:
        raw = pipe.get(keys.job(job_id))
        return Job.model_validate_json(raw) if raw else None

    def write(self, pipe: Pipeline, job: Job, *, write_id: str) -> None:
        """Queue the record and its indexes (inside MULTI)."""
        job.write_id = write_id
        job.sequence += 1
        record = job.model_dump_json()
        pipe.set(keys.job(job.id), record, keepttl=True)
        self.follow_status(pipe, job)
        # The record rides along: a follower woken by it need not read it back (api/watch.py).
        pipe.publish(keys.job_changes_channel(), f"{job.id} {job.sequence} {record}")

    @staticmethod
    def forget(pipe: Pipeline, job_ids: list[str]) -> None:
        """Delete records and every index entry of these jobs (inside MULTI); whoever follows
        one of them is woken and finds it gone."""
        if not job_ids:
            return
        pipe.delete(*(keys.job(j) for j in job_ids))
        for index in (keys.active_jobs(), keys.running_jobs(), keys.outbox()):
            pipe.zrem(index, *job_ids)
        for job_id in job_ids:
            pipe.publish(keys.job_changes_channel(), f"{job_id} 0")

    def written(self, job_id: str, write_id: str) -> Job | None:
        """The job if its last write carries our stamp (EXEC applied, reply lost)."""
        job = self.find(job_id)
        return job if job is not None and job.write_id == write_id else None

    # -- index repair (check) -----------------------------------------------------------

    def index_members(self, key: str) -> set[str]:
        return {to_str(v) for v in self._redis.zrange(key, 0, -1)}

    def fix_index(self, key: str, *, add: dict[str, float], remove: set[str]) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            if add:
                pipe.zadd(key, add)
            if remove:
                pipe.zrem(key, *remove)
            pipe.execute()

    def in_index(self, key: str, job_id: str) -> bool:
        return self._redis.zscore(key, job_id) is not None

    @staticmethod
    def index_entries(job: Job) -> dict[str, float | None]:
        """Where the indexes that follow a job's status should list it: index key -> its
        score there, or None where it should not be listed."""
        unfinished = not job.status.is_final
        running = job.status is JobStatus.IN_PROGRESS
        started = (job.started_at or job.created_at).timestamp()
        return {keys.active_jobs(): job.created_at.timestamp() if unfinished else None,
                keys.running_jobs(): started if running else None,
                keys.conv_active(job.conversation_id): float(job.turn) if unfinished else None}

    def scan_records(self, *, batch: int = SCAN_BATCH) -> Iterator[tuple[str, bytes | None]]:
        """Every job record as stored (id, raw JSON; None if it expired while we scanned),
        unparsed: a record that does not parse is for the caller to report."""
        ids: list[str] = []
        prefix = len(keys.job(""))
        for key in self._redis.scan_iter(match=keys.job_pattern(), count=1000):
            ids.append(to_str(key)[prefix:])
            if len(ids) >= batch:
                yield from self.raw_records(ids)
                ids = []
        yield from self.raw_records(ids)

    def raw_records(self, job_ids: Iterable[str], *, client: Redis | None = None,
                    batch: int = SCAN_BATCH) -> list[tuple[str, bytes | None]]:
        """The stored JSON of each job (None when gone), `batch` per MGET; `client` may be a
        WATCHing pipeline."""
        reader, ids, found = client or self._redis, list(job_ids), []
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            values: list[Any] = list(reader.mget([keys.job(i) for i in chunk]))
            found += list(zip(chunk, values, strict=True))
        return found

    # -- turns: counter and turn -> job map (check's renumbering) -----------------------

    @staticmethod
    def turn_keys(conversation_id: str) -> tuple[str, str]:
        """The turn counter and the turn -> job map: WATCH them from the reads a
        `remap_turns` is based on."""
        return keys.conv_turn(conversation_id), keys.conv_jobs(conversation_id)

    def turn_counter(self, conversation_id: str, *, client: Redis | None = None) -> int:
        """The last turn handed out (0 before the first); `client` may be a WATCHing pipeline."""
        return int((client or self._redis).get(keys.conv_turn(conversation_id)) or 0)

    def turn_map(self, conversation_id: str, *,
                 client: Redis | None = None) -> dict[int, str]:
        """Turn -> job id; `client` may be a WATCHing pipeline.  A field that is not a turn
        number is not ours to judge and is left out."""
        raw: dict[Any, Any] = (client or self._redis).hgetall(keys.conv_jobs(conversation_id))
        return {int(to_str(turn)): to_str(job_id) for turn, job_id in raw.items()
                if to_str(turn).isdigit()}

    def raise_turn_counter(self, conversation_id: str, at_least: int) -> int:
        """Raise the counter to `at_least`, never lowering it (a submit may INCR it
        meanwhile); returns the counter after."""
        return int(self._redis.eval(_RAISE_COUNTER_LUA, 1, keys.conv_turn(conversation_id),
                                    at_least))

    @staticmethod
    def remap_turns(pipe: Pipeline, conversation_id: str, *, unmap: Iterable[int],
                    mapping: Mapping[int, str], counter: int) -> None:
        """Queue, in the caller's MULTI, dropping the turns `unmap`, mapping turns to jobs,
        and setting the counter (lowering it too: only for renumbering, with
        `turn_keys` WATCHed from the reads it is based on)."""
        turns_key, jobs_key = JobStore.turn_keys(conversation_id)
        dropped = [str(t) for t in unmap]
        if dropped:
            pipe.hdel(jobs_key, *dropped)
        if mapping:
            pipe.hset(jobs_key, mapping={str(t): job_id for t, job_id in mapping.items()})
        pipe.set(turns_key, counter)

    def set_turn(self, job_id: str, turn: int) -> Job | None:
        """Move a job record to another turn (after a renumbering); None when it is gone."""
        def mutate(job: Job) -> None:
            job.turn = turn

        return self.update(job_id, mutate, only_active=False)
