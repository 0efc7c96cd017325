"""Build the FastAPI app: settings, Redis, the Celery producer, routers, error handlers."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from redis import Redis
from starlette.concurrency import run_in_threadpool

from api.auth import authenticate, document_security
from api.errors import install_error_handlers
from api.head import HeadAsGet
from api.limits import BodyTooLarge, BoundedInput, on_body_too_large, route_limits
from api.middleware import RequestTimeoutMiddleware, StoreMonitor, request_budget
from api.openapi_limits import document_limits
from api.routes import chat, conversations, docs, health, jobs, ops, signin, transfer, turns, ui
from api.security import LocalOnly, SameOrigin, SecurityHeaders, TrustedHosts
from api.watch import JobWatcher
from context.builder import max_message_tokens
from context.terms import warm_up as warm_up_terms
from context.tokens import count_tokens
from core.access import Access, load_access
from core.followers import FollowerSlots
from core.history import history_store
from core.lifecycle import Lifecycle, Limits
from core.llm_check import LLMCheck
from core.logs import configure_logging
from core.metrics import RedisCollector
from core.ports import Broker
from core.ratelimit import SubmitLimiter
from core.redis_client import connect
from core.redis_tls import check_at_start
from core.resources import ResourceMonitor
from core.sessions import Sessions
from core.settings import Settings, get_settings
from core.signin_guard import SignInGuard
from core.sweeper import Sweeper
from taskqueue.app import create_celery
from taskqueue.port import CeleryBroker

logger = logging.getLogger(__name__)

HEALTH_REDIS_TIMEOUT_S = 0.3
API_DESCRIPTION = """Chat with しぃ. `POST /api/chat` answers 202 with the job; follow it by
long-poll (`GET /api/jobs/{id}?wait=30&after=<sequence>`) or Server-Sent Events
(`GET /api/jobs/{id}/events`). Every error is `{"error": {"code", "message"}}` with a
Japanese message for the user. See README.md, "The API"."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings, process="api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = ResourceMonitor(label="api", interval_s=settings.resource_log_interval,
                                  warn_mb=settings.memory_warn_mb)
        monitor.start()
        # Storing a message indexes its terms: load the analysers before the first one.
        await run_in_threadpool(warm_up_terms)
        # A plaintext Redis off this host, or a TLS one whose certificate fails: said now.
        await run_in_threadpool(check_at_start, settings.redis_url,
                                plaintext_ok=settings.redis_plaintext_ok)
        sweeper = api_sweeper(settings, broker=app.state.broker)
        sweeper.start()
        app.state.llm_check.status()  # the first check of the LLM endpoint starts now
        app.state.watcher.start()
        app.state.store_monitor.start()
        yield
        await app.state.store_monitor.stop()
        await app.state.watcher.stop()
        sweeper.stop()
        monitor.stop()
        app.state.redis.close()
        app.state.health_redis.close()

    app = FastAPI(title="MySisterDB", version="0.1.0", lifespan=lifespan,
                  description=API_DESCRIPTION, dependencies=[Depends(authenticate)],
                  # Our own routes (api/routes/docs.py): authenticated, no CDN.
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.access = load_access(settings, announce=announce)
    app.state.redis = connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
    app.state.health_redis = connect(settings.redis_url, timeout_s=HEALTH_REDIS_TIMEOUT_S)
    app.state.llm_check = LLMCheck.from_settings(settings)
    app.state.watcher = JobWatcher(url=settings.redis_url, timeout_s=settings.redis_timeout_s)
    app.state.store_monitor = StoreMonitor(url=settings.redis_url)
    app.state.limiter = SubmitLimiter(client=app.state.redis, rate=settings.rate_limit)
    # Open mode is this machine's one user (and the long-poll bench's 200 waiters): the cap
    # is for people who reach the API from elsewhere.
    app.state.followers = (FollowerSlots(client=app.state.redis,
                                         cap=settings.max_followers_per_person)
                           if app.state.access.needs_credentials else None)
    # The page's sessions (signed out in Redis) and the failed sign-in limits.
    app.state.sessions = Sessions(access=app.state.access, client=app.state.redis)
    app.state.signin_guard = SignInGuard(client=app.state.redis,
                                         per_address=settings.signin_failures_per_address,
                                         total=settings.signin_failures_total)
    app.state.metrics_registry = metrics_registry(app.state.redis, settings,
                                                  watcher=app.state.watcher)
    # No task-sent event per submit: a second publish (a Redis PUBLISH and its fan-out)
    # inside every POST /api/chat, about a fifth of the submit's own time, for Flower's
    # "sent" state alone; Flower still sees each prompt received, started and ended.
    broker = CeleryBroker(create_celery(settings, sent_events=False,
                                        broker_socket_timeout_s=settings.redis_timeout_s))
    app.state.broker = DyingBroker(broker) if settings.debug_die_before_publish else broker
    app.state.max_message_tokens = max_message_tokens(
        persona_tokens=count_tokens(settings.persona_text()),
        max_tokens=settings.max_context_tokens)
    install_error_handlers(app)
    app.add_exception_handler(BodyTooLarge, on_body_too_large)
    for router in (chat.router, jobs.router, conversations.router, turns.router,
                   transfer.router, health.router, ops.router, signin.router, docs.router,
                   ui.router):
        app.include_router(router)
    add_middlewares(app, settings, store=app.state.store_monitor, access=app.state.access)
    document_security(app)
    document_limits(app, settings)
    return app


def add_middlewares(app: FastAPI, settings: Settings, *, store: StoreMonitor,
                    access: Access) -> None:
    """Innermost first: the last one added sees a request first (the input bounds)."""
    app.add_middleware(RequestTimeoutMiddleware, timeout_s=settings.request_timeout,
                       budget=request_budget(settings.request_timeout,
                                             transfer_s=settings.import_timeout_s),
                       store=store)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(SameOrigin, allowed_origins=settings.cors_list())
    if settings.cors_list():  # off unless configured: no other site reads our answers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_list(),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                          "Last-Event-ID"],
                           expose_headers=["Location", "Retry-After"], max_age=600)
    app.add_middleware(TrustedHosts, allowed=settings.host_list())
    if not access.needs_credentials:  # open mode: this machine only, never through a proxy
        app.add_middleware(LocalOnly)
    app.add_middleware(HeadAsGet)  # every layer inside answers a HEAD as its GET
    app.add_middleware(BoundedInput, max_body=settings.max_body, routes=route_limits(settings),
                       max_query=settings.max_query_bytes,
                       max_headers=settings.max_header_bytes)  # outermost: before anything


def announce(text: str) -> None:
    # stdout, not the log: the first start's sign-in URL carries the token (printed that
    # once: core/access.sign_in_message), and log files never do.
    print(text, flush=True)


class DyingBroker(CeleryBroker):
    """MYSISTERDB_DEBUG_DIE_BEFORE_PUBLISH: the API dies between storing a job and sending
    it, so a test can prove the outbox sends it anyway."""

    def __init__(self, broker: CeleryBroker) -> None:
        super().__init__(broker.app)

    def publish_chat(self, job_id: str) -> None:
        logger.critical("debug: dying before publishing job %s", job_id)
        os._exit(137)


def api_sweeper(settings: Settings, *, broker: Broker) -> Sweeper:
    """The API sweeps too: with every worker gone, stored prompts still reach the broker
    and dead jobs still end, so nobody waits on a job that cannot finish."""
    def make() -> Lifecycle:
        client = connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
        return Lifecycle(client=client, history=history_store(client),
                         limits=Limits.from_settings(settings), broker=broker)

    return Sweeper(make_lifecycle=make, interval_s=settings.sweep_interval_s, name="api-sweep")


def metrics_registry(client: Redis, settings: Settings, *,
                     watcher: JobWatcher) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RedisCollector(client, max_wait_s=settings.max_queue_wait_s,
                                     max_depth=settings.max_queue_depth))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes of the API
    Gauge("mysisterdb_job_followers", "Long-polls and event streams of this API process "
          "waiting for a job to change.", registry=registry).set_function(
              lambda: watcher.waiting)
    return registry
