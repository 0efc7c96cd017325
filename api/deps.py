"""Named dependencies: routes ask for what they need by type."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Path, Request

from api.auth import caller_of
from api.schemas import CONVERSATION_ID_PATTERN
from api.watch import JobWatcher
from context.redis_store import RedisHistoryStore
from core.access import Caller
from core.chat import ChatService
from core.conversations import ConversationReader
from core.history import history_store
from core.lifecycle import Lifecycle, Limits
from core.namespaces import internal_id
from core.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def get_watcher(request: Request) -> JobWatcher:
    return request.app.state.watcher  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
# The person asking (set by api.auth.authenticate for every route).
CallerDep = Annotated[Caller, Depends(caller_of)]
WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


def get_history(client: RedisDep) -> RedisHistoryStore:
    return history_store(client)


HistoryDep = Annotated[RedisHistoryStore, Depends(get_history)]


def get_lifecycle(request: Request, client: RedisDep, history: HistoryDep,
                  settings: SettingsDep) -> Lifecycle:
    return Lifecycle(client=client, history=history, limits=Limits.from_settings(settings),
                     broker=request.app.state.broker)


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


def own_conversation(conversation_id: Annotated[str, Path(pattern=CONVERSATION_ID_PATTERN)],
                     lifecycle: LifecycleDep, caller: CallerDep) -> str:
    """The caller's conversation named in the path, as stored (core/namespaces.py)."""
    return internal_id(lifecycle, person=caller.person or "", conversation_id=conversation_id)


# The stored id of the caller's conversation named by the path's {conversation_id}.
OwnConversationDep = Annotated[str, Depends(own_conversation)]
