"""Named dependencies: routes ask for what they need by type."""

from __future__ import annotations

from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request

from api.auth import caller_of
from api.watch import JobWatcher
from context.redis_store import RedisHistoryStore
from mysisterdb.access import Caller
from mysisterdb.chat import ChatService
from mysisterdb.conversations import ConversationReader
from mysisterdb.history import history_store
from mysisterdb.lifecycle import Lifecycle, Limits
from mysisterdb.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def get_celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


def get_watcher(request: Request) -> JobWatcher:
    return request.app.state.watcher  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
# The person asking (set by api.auth.authenticate for every route).
CallerDep = Annotated[Caller, Depends(caller_of)]
WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def get_history(client: RedisDep) -> RedisHistoryStore:
    return history_store(client)


HistoryDep = Annotated[RedisHistoryStore, Depends(get_history)]


def get_lifecycle(request: Request, client: RedisDep, history: HistoryDep,
                  settings: SettingsDep) -> Lifecycle:
    return Lifecycle(client=client, history=history, limits=Limits.from_settings(settings),
                     publish=request.app.state.publish)


def lifecycle_of(request: Request) -> Lifecycle:
    """The same, outside dependency injection (an async route hands it to a thread)."""
    client = get_redis(request)
    return get_lifecycle(request, client, history_store(client), get_settings(request))


def get_reader(client: RedisDep, history: HistoryDep) -> ConversationReader:
    return ConversationReader(client=client, history=history)


ConversationReaderDep = Annotated[ConversationReader, Depends(get_reader)]


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


def get_chat_service(request: Request, lifecycle: LifecycleDep, settings: SettingsDep,
                     caller: CallerDep) -> ChatService:
    return ChatService(lifecycle=lifecycle, max_message_chars=settings.max_message_chars,
                       max_message_tokens=request.app.state.max_message_tokens,
                       max_queue_depth=settings.max_queue_depth,
                       max_queue_wait_s=settings.max_queue_wait_s, person=caller.person or "",
                       limiter=request.app.state.limiter)


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
