"""The worker's PostgreSQL pool, opened and closed with the worker (a Faust service)."""

from __future__ import annotations

import asyncio

import asyncpg
import faust

from pipeline.retries import until_it_works
from pipeline.stores.postgres import TRANSIENT_ERRORS


class Database(faust.Service):
    """Owns the pool; ``pool()`` waits until the database answers (it may start after us)."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._ready = asyncio.Event()

    async def on_start(self) -> None:
        self.add_future(self._connect())

    async def _connect(self) -> None:
        async for attempt in until_it_works("database_unreachable", TRANSIENT_ERRORS):
            with attempt:
                self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4, timeout=10)
        self._ready.set()

    async def pool(self) -> asyncpg.Pool:
        await self._ready.wait()
        assert self._pool is not None
        return self._pool

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
