"""The worker's PostgreSQL pool, opened and closed with the worker (a Faust service), and what its
errors mean for the event being written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import faust

from pipeline.retries import describe, until_it_works

T = TypeVar("T")
DATA_ERROR_CLASSES = ("22", "23")
"""SQLSTATE classes of a statement refused for the values it was given: data exception,
integrity constraint violation."""


def is_data_error(error: BaseException) -> bool:
    """Whether the database refused a write for its values, so that writing them again fails again.

    Anything else depends on the database's state, which changes: no tables yet (42P01), a
    read-only standby (25006), a full disk (53100), a statement timeout (57014), a lost connection.
    The writer holds its stream and retries; dead-lettering those would drop every event meanwhile.
    """
    code = getattr(error, "sqlstate", None) if isinstance(error, asyncpg.PostgresError) else None
    return isinstance(code, str) and code[:2] in DATA_ERROR_CLASSES


class DatabaseUnavailable(ConnectionError):
    """The pool is not open yet; the message says why."""


class Database(faust.Service):
    """Owns the pool; ``pool()`` raises ``DatabaseUnavailable`` while it cannot be opened."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._failure: BaseException | None = None
        self._tried = asyncio.Event()

    async def on_start(self) -> None:
        self.add_future(self._connect())

    async def _connect(self) -> None:
        # Any error, not only a server away: a database not created yet or a role not granted yet
        # is fixed by an operator while we wait, not by restarting the worker.
        async for attempt in until_it_works("database_unreachable", on_wait=self._failed):
            with attempt:
                self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4, timeout=10)
        self._tried.set()

    def _failed(self, error: BaseException | None) -> None:
        self._failure = error
        self._tried.set()

    async def pool(self) -> asyncpg.Pool:
        """The pool, once the first attempt to open it is over: callers retry as they see fit and
        report why they wait, rather than hang here without a word."""
        await self._tried.wait()
        if self._pool is None:
            raise DatabaseUnavailable(f"no connection to the database yet: {describe(self._failure)}")
        return self._pool

    async def run(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``operation`` on a connection of the pool. After a failure, the pool's open sessions
        are dropped: they keep what they started with (a read-only default, a server that failed
        over) and would refuse the same way forever, so a held stream retries on new ones."""
        pool = await self.pool()
        try:
            async with pool.acquire() as conn:
                return await operation(conn)
        except Exception:
            await pool.expire_connections()
            raise

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
