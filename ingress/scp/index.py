"""The PostgreSQL index as the association threads read it: on the SCP's asyncio loop, through the
pool ``server.serve`` opens, with a deadline.

Storing never reads the index: only C-FIND, C-GET and C-MOVE do, so a database that is away costs
them a failure status (``IndexUnavailable``) and leaves C-STORE untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from pipeline.errors import PacsflowError
from pipeline.stores.search import InvalidQuery

T = TypeVar("T")


class IndexUnavailable(PacsflowError):
    """The index could not be read (the database is away, slow, or refused the query)."""


class IndexReader:
    """Runs reads of the index from any thread on the loop that owns the pool."""

    def __init__(self, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._pool = pool
        self._loop = loop
        self._timeout_s = timeout_s

    def run(self, read: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """``read(pool)``'s result; blocks the calling thread (never the loop's own) until it is in.
        Raises ``InvalidQuery`` as is, anything else as ``IndexUnavailable``."""

        if _running_loop() is self._loop:
            # The read would be scheduled on this very thread, blocked waiting for it: a deadlock.
            raise RuntimeError("IndexReader.run called on its loop's own thread: it would deadlock")

        async def reading() -> T:
            return await read(self._pool)

        try:
            future = asyncio.run_coroutine_threadsafe(reading(), self._loop)
        except RuntimeError as exc:  # the loop is closed: the SCP is stopping
            raise IndexUnavailable("the SCP is stopping") from exc
        try:
            return future.result(self._timeout_s)
        except InvalidQuery:
            raise
        except concurrent.futures.TimeoutError as exc:
            if future.done():  # the read's own timeout (asyncpg's connect): the database is away
                raise IndexUnavailable(f"the index cannot be read: {_reason(exc)}") from exc
            future.cancel()
            raise IndexUnavailable(f"the index did not answer within {self._timeout_s:g} s") from exc
        except Exception as exc:
            raise IndexUnavailable(f"the index cannot be read: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # none on this thread: an association's
        return None
