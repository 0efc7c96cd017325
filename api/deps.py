"""Named dependencies: routes ask for what they need by type.

Those that only assemble objects (no I/O) are `async def`: FastAPI runs a plain `def`
dependency in its thread pool, one hop per dependency and request; a submit had six of
them, about a third of its time on a busy box (docs/performance.md, "Submit"). Those that
read Redis stay plain functions, so the event loop never waits on a socket."""

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
from core.transfer_store import TransferStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


async def get_watcher(request: Request) -> JobWatcher:
    return request.app.state.watcher  # type: ignore[no-any-return]


async def get_caller(request: Request) -> Caller:
    return caller_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
# The person asking (set by api.auth.authenticate for every route).
CallerDep = Annotated[Caller, Depends(get_caller)]
WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


async def get_history(client: RedisDep) -> RedisHistoryStore:
    return history_store(client)


HistoryDep = Annotated[RedisHistoryStore, Depends(get_history)]


async def get_lifecycle(request: Request, client: RedisDep, history: HistoryDep,
                        settings: SettingsDep) -> Lifecycle:
    return build_lifecycle(request, client, history, settings)


def build_lifecycle(request: Request, client: redis.Redis, history: RedisHistoryStore,
                    settings: Settings) -> Lifecycle:
    return Lifecycle(client=client, history=history, limits=Limits.from_settings(settings),
                     broker=request.app.state.broker)


def lifecycle_of(request: Request) -> Lifecycle:
    """The same, outside dependency injection (an async route hands it to a thread)."""
    client: redis.Redis = request.app.state.redis
    return build_lifecycle(request, client, history_store(client), request.app.state.settings)


async def get_reader(client: RedisDep, history: HistoryDep) -> ConversationReader:
    return ConversationReader(client=client, history=history)


ConversationReaderDep = Annotated[ConversationReader, Depends(get_reader)]


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


async def get_chat_service(request: Request, lifecycle: LifecycleDep, settings: SettingsDep,
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


async def get_transfer_store(request: Request, client: RedisDep, history: HistoryDep,
                       settings: SettingsDep) -> TransferStore:
    return TransferStore(client=client, history=history, broker=request.app.state.broker,
                         embeddings=settings.embeddings_enabled)


TransferStoreDep = Annotated[TransferStore, Depends(get_transfer_store)]
