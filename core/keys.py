"""Every Redis key MySisterDB uses, and how long each one lives.

One module so that an operator (and `mysisterdb check`) can see the whole
data model at a glance.  Lifetimes carry their unit in the name.

Layout::

    msdb:job:{job_id}            string job record JSON (status, steps, text)  job_ttl_s
    msdb:idem:{person}:{key}     string Idempotency-Key -> "job id:sha256 of the request"
                                 (keys are the person's own)              idempotency_ttl_s
    msdb:conv:{cid}:owner        string the person who first wrote in it      kept
    msdb:conv:{cid}:turn         string last turn handed out (INCR)           kept
    msdb:conv:{cid}:jobs         hash   turn -> job id                        kept
    msdb:conv:{cid}:messages     zset   score = seq, member = message JSON    kept
                                 (a turn's chosen reply only: what is remembered)
    msdb:conv:{cid}:alternatives hash   turn -> {"chosen": k, "replies": [...]}  kept
                                 (every reply of a regenerated turn, max_alternatives)
    msdb:conv:{cid}:summary      hash   running summary + seq it covers       kept
    msdb:conv:{cid}:summarizing  string a summary task is queued or running   summary_pending_ttl_s
    msdb:conv:{cid}:embedding    string an embedding task is queued or running embedding_pending_ttl_s
    msdb:conv:{cid}:ctx:*        the context library's relevance index       kept
    msdb:conv:{cid}:ctx:vec      zset   seq -> seq + scale + int8 embedding  kept
    msdb:jobs:active             zset   queued or running job -> created (epoch) kept
    msdb:jobs:running            zset   running job -> started (epoch)        kept
    msdb:jobs:outbox             zset   job to publish -> when (epoch)        kept
    msdb:jobs:dispatched         zset   head not yet started -> last sent (epoch) kept
    msdb:conv:{cid}:active       zset   job id -> turn, jobs not yet final    kept
    msdb:conversations           set    every conversation id                 kept
    msdb:conversations:activity  zset   conversation id -> last activity (epoch) kept
    msdb:person:{name}:conversations zset the person's conversations -> last activity kept
    msdb:ratelimit/...           the `limits` library's counters (per person; failed
                                 sign-ins per address and overall)            its window
    msdb:person:{name}:followers zset   open event stream / long-poll -> lease end (epoch)
                                 (members past their lease are dropped)  follower_lease_s
    msdb:session:{sid}:ended     string a signed-out page session             its remaining life
    msdb:person:{name}:sessions_ended_before string epoch ms: the person's sessions
                                 made up to then are ended ("sign out everywhere") session life
    msdb:incidents               list   incident JSON, newest first          incidents_max
    msdb:worker:heartbeat:{host} string a worker's heartbeat JSON            worker_heartbeat_ttl_s
    msdb:workers                 set    hostnames that sent a heartbeat (readers drop expired) kept
    msdb:jobs:recent_reply_s     list   seconds recent prompts held a slot, newest first  recent_replies_max
    msdb:metrics:counters        hash   counter name|labels -> value          kept
    msdb:metrics:hist:{name}     hash   histogram buckets, sum, count         kept
    msdb:jobs:last_started_at    string epoch of the last job start           kept
    msdb:transfer:staging        zset   staging id of an import/branch being written
                                 -> started (epoch); its keys are msdb:conv:~…:*  transfer_staging_stale_s

Pub/sub channel (not a key): `msdb:jobs:changed` carries "job_id sequence" for every job
write, published in the write's own transaction; API processes wake long-polls and SSE
streams with it (api/watch.py).

Broker keys (kombu's Redis transport, read by the queue monitor): the queue lists
`chat`, `summary` and their priority sub-lists `chat\x06\x16{3,6,9}`, and the
`unacked` hash of messages reserved by a worker but not yet acknowledged.

Conversation data has no TTL: it is what the user asked us to remember.
"""

from __future__ import annotations

PREFIX = "msdb"

job_ttl_s = 7 * 24 * 3600
idempotency_ttl_s = 24 * 3600
worker_heartbeat_ttl_s = 10
incidents_max = 1000
summary_pending_ttl_s = 900  # above the longest retry chain of a summary task
embedding_pending_ttl_s = 300  # above an embedding task's wait in the queue and its limit
max_alternatives = 10  # replies kept per turn; the oldest is dropped past it
transfer_staging_stale_s = 3600  # an import's staged keys older than this are leftovers
# A slot of an open event stream or long-poll is leased this long and renewed while it is
# open: an API that dies (kill -9) holding slots gives them back within this.
follower_lease_s = 60
recent_replies_max = 50  # the window of the reply time behind 429 (mysisterdb/capacity.py)


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def job_pattern() -> str:
    return f"{PREFIX}:job:*"


def active_jobs() -> str:
    """Queued and running jobs: what queue depth, the reaper and `check` look at."""
    return f"{PREFIX}:jobs:active"


def running_jobs() -> str:
    return f"{PREFIX}:jobs:running"


def dispatched() -> str:
    """Heads handed their turn and not started yet, by when their message was last sent:
    the sweep re-sends one whose message was lost."""
    return f"{PREFIX}:jobs:dispatched"


def outbox() -> str:
    """Jobs handed their turn but not yet known to be in the broker (see lifecycle)."""
    return f"{PREFIX}:jobs:outbox"


def conv_active(conversation_id: str) -> str:
    """A conversation's line: its jobs that have not ended, scored by turn. The lowest (the
    head) is the only one with a broker message."""
    return conv_prefix(conversation_id) + "active"


def idempotency(person: str, key: str) -> str:
    """Scoped to the person: another person's key never finds (or blocks) this one's."""
    return f"{PREFIX}:idem:{person}:{key}"


def conv_owner(conversation_id: str) -> str:
    """The person the conversation belongs to (absent: older than owners, see access.OWNER)."""
    return conv_prefix(conversation_id) + "owner"


def person_conversations(person: str) -> str:
    """One person's conversations by last activity: their conversation list."""
    return f"{PREFIX}:person:{person}:conversations"


def person_followers(person: str) -> str:
    """The person's open event streams and long-polls, across every API process."""
    return f"{PREFIX}:person:{person}:followers"


def session_ended(session_id: str) -> str:
    """A page session signed out before it expired (core/sessions.py)."""
    return f"{PREFIX}:session:{session_id}:ended"


def sessions_ended_before(person: str) -> str:
    """Epoch milliseconds: every session of `person` made up to then is ended."""
    return f"{PREFIX}:person:{person}:sessions_ended_before"


RATE_LIMIT_PREFIX = f"{PREFIX}:ratelimit"  # given to `limits`' RedisStorage as key_prefix


def conversations() -> str:
    return f"{PREFIX}:conversations"


def conversations_by_activity() -> str:
    """Conversation id -> epoch of its last submit or job end: the conversation list's order."""
    return f"{PREFIX}:conversations:activity"


def job_changes_channel() -> str:
    """Pub/sub channel: "job_id sequence" after every job write (a channel, not a key)."""
    return f"{PREFIX}:jobs:changed"


def conv_prefix(conversation_id: str) -> str:
    """Every key of one conversation starts with this (reset deletes them all)."""
    return f"{PREFIX}:conv:{conversation_id}:"


def conv_turn(conversation_id: str) -> str:
    return conv_prefix(conversation_id) + "turn"


def conv_jobs(conversation_id: str) -> str:
    return conv_prefix(conversation_id) + "jobs"


def conv_messages(conversation_id: str) -> str:
    return conv_prefix(conversation_id) + "messages"


def conv_alternatives(conversation_id: str) -> str:
    """The replies of regenerated turns (core/alternatives.py); the chosen one is also the
    turn's message in conv_messages."""
    return conv_prefix(conversation_id) + "alternatives"


def conv_summary(conversation_id: str) -> str:
    return conv_prefix(conversation_id) + "summary"


def conv_summarizing(conversation_id: str) -> str:
    return conv_prefix(conversation_id) + "summarizing"


def conv_embedding(conversation_id: str) -> str:
    """Dedupes the background embedding task, like conv_summarizing."""
    return conv_prefix(conversation_id) + "embedding"


def conv_context(conversation_id: str, name: str) -> str:
    """Keys owned by the context library's Redis store (its relevance index)."""
    return conv_prefix(conversation_id) + f"ctx:{name}"


def conv_key(conversation_id: str, name: str) -> str:
    """The context library's key layout (`RedisHistoryStore(client, key_of=keys.conv_key)`):
    "messages" -> conv_messages, "summary" -> conv_summary, "ctx:x" -> conv_context(cid, "x")."""
    return conv_prefix(conversation_id) + name


def incidents() -> str:
    return f"{PREFIX}:incidents"


def worker_heartbeat(hostname: str) -> str:
    return f"{PREFIX}:worker:heartbeat:{hostname}"


def workers() -> str:
    """Index of heartbeat keys: health and every submit read the heartbeats without a SCAN
    of the whole keyspace (which grows with every job)."""
    return f"{PREFIX}:workers"


def recent_reply_s() -> str:
    return f"{PREFIX}:jobs:recent_reply_s"


def metrics_counters() -> str:
    return f"{PREFIX}:metrics:counters"


def metrics_histogram(name: str) -> str:
    return f"{PREFIX}:metrics:hist:{name}"


def last_job_started_at() -> str:
    return f"{PREFIX}:jobs:last_started_at"


def transfer_staging() -> str:
    """Imports and branches being written under a staging id (core/transfer_store.py): the
    next one deletes what a crashed one left, past transfer_staging_stale_s."""
    return f"{PREFIX}:transfer:staging"


BROKER_PRIORITY_SEP = "\x06\x16"
BROKER_PRIORITY_STEPS = (0, 3, 6, 9)
BROKER_UNACKED = "unacked"
BROKER_UNACKED_INDEX = "unacked_index"  # delivery tag -> when it was reserved (epoch)


def broker_queue_lists(queue: str) -> list[str]:
    """The Redis lists holding one Celery queue: the base key and its priority sub-lists."""
    return [queue if p == 0 else f"{queue}{BROKER_PRIORITY_SEP}{p}" for p in BROKER_PRIORITY_STEPS]
