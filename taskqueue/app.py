"""Queues, task names and the Celery app factory: what the API, the workers and the CLI
share about the broker. Building an app is left to each process's entry point; nothing here
runs at import.

The choices here are what makes a hung prompt harmless:
- prefork pool + task_time_limit: the parent SIGKILLs a child stuck past the hard limit,
  even one stuck in C code, and forks a fresh one;
- task_acks_late + task_reject_on_worker_lost=False: a message is acked only once its task
  ended, so a worker that dies before *starting* a prompt loses nothing, while a task whose
  child was killed is acked (not redelivered again and again: no poison loop);
- worker_cancel_long_running_tasks_on_connection_loss=False: a prompt running when Redis
  restarts goes on and completes (its writes retry); Celery cancels such tasks because their
  message may be delivered again, which our atomic claim already makes harmless;
- worker_prefetch_multiplier=1: a busy worker does not hoard prompts others could run (with
  the chat worker's autoscale it reserves up to its maximum slots, and forks a process for each
  reserved prompt it has none for: it runs everything it reserves at once);
- visibility_timeout above the hard limit: Redis does not hand a running prompt to a
  second worker while the first is still within its limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery

from core import redis_sentinel
from core.ports import CHAT_QUEUE, CHAT_TASK, EMBED_TASK, SUMMARY_QUEUE, SUMMARY_TASK
from core.redis_tls import broker_ssl_options
from core.settings import Settings

logger = logging.getLogger(__name__)

KOMBU_TRANSPORT = "taskqueue.kombu_redis:Transport"  # resolved by kombu when it connects
KOMBU_SENTINEL_TRANSPORT = "taskqueue.kombu_redis:SentinelTransport"


def broker_url(settings: Settings) -> str:
    # Unset only outside `mysisterdb up` (which always sets it): assume a local Redis.
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    if redis_sentinel.is_sentinel(url):
        return redis_sentinel.broker(url, timeout_s=SENTINEL_TIMEOUT_S)[0]
    return url


SENTINEL_TIMEOUT_S = 2.0  # asking a Sentinel where the primary is


def sentinel_options(settings: Settings, *, timeout_s: float = SENTINEL_TIMEOUT_S,
                     ) -> dict[str, object]:
    """kombu's master_name and sentinel_kwargs for a Sentinel URL, else nothing."""
    if not redis_sentinel.is_sentinel(settings.redis_url):
        return {}
    return redis_sentinel.broker(settings.redis_url or "", timeout_s=timeout_s)[1]


def create_celery(settings: Settings, *, include: Sequence[str] = (),
                  broker_socket_timeout_s: float = 10.0, sent_events: bool = True) -> Celery:
    """The worker keeps the default socket timeout; the API passes a short one so that a
    publish or a revoke to a hung Redis fails fast instead of holding a request.
    `sent_events=False`: no task-sent event per publish (the API's submit, see api/main.py)."""
    app = Celery("mysisterdb", broker=broker_url(settings), include=list(include))
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=CHAT_QUEUE,
        task_routes={CHAT_TASK: {"queue": CHAT_QUEUE}, SUMMARY_TASK: {"queue": SUMMARY_QUEUE},
                     EMBED_TASK: {"queue": SUMMARY_QUEUE}},
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_annotations={SUMMARY_TASK: {
            "time_limit": settings.summary_time_limit,
            "soft_time_limit": summary_soft_limit(settings.summary_time_limit)},
            EMBED_TASK: {"time_limit": settings.embedding_time_limit,
                         "soft_time_limit": summary_soft_limit(settings.embedding_time_limit)}},
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_max_memory_per_child=settings.worker_max_memory_per_child_mb * 1024,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        # Off unless asked for or Flower asks (docs/performance.md "What a prompt costs").
        worker_send_task_events=settings.task_events,
        task_send_sent_event=sent_events,
        # kombu's Redis transport with its closing defect fixed (see the module).
        broker_transport=(KOMBU_SENTINEL_TRANSPORT
                          if redis_sentinel.is_sentinel(settings.redis_url) else KOMBU_TRANSPORT),
        # rediss://: the URL's TLS options (core/redis_tls.py) on the app too, for what
        # rebuilds a connection from the app (as_uri() drops the URL's query); None: plain.
        broker_use_ssl=broker_ssl_options(settings.redis_url or ""),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # Publishing must fail fast when Redis is down: the API answers 503 within 2 s.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.2},
        broker_transport_options={
            "visibility_timeout": int(settings.task_time_limit * 2 + 60),
            "socket_timeout": broker_socket_timeout_s,
            "socket_connect_timeout": min(5.0, broker_socket_timeout_s),
            "health_check_interval": 10,
            # The API's short timeout bounds asking the Sentinels too (each is asked once).
            **sentinel_options(settings, timeout_s=min(SENTINEL_TIMEOUT_S,
                                                       broker_socket_timeout_s)),
        },
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
    )
    return app


def summary_soft_limit(hard_s: float) -> float:
    """A summary's soft limit leaves time to release its flag before the hard one."""
    return max(1.0, hard_s * 0.8)

