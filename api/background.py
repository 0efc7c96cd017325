"""A loop that lives as long as the app, on a Redis client of its own (the store guard's
probe, the job watcher's subscription): started in the lifespan, cancelled and its client
closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aredis


class RedisLoop:
    name = "redis-loop"

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    async def run(self) -> None:
        raise NotImplementedError
