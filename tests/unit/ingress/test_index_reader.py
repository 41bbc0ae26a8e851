"""``IndexReader.run`` is for the association threads: on its loop's own thread it would wait for a
read that thread can never run."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ingress.scp.index import IndexReader


async def _read(pool: asyncpg.Pool) -> int:
    return 1


def test_run_on_the_loops_own_thread_is_refused_not_a_deadlock() -> None:
    async def main() -> None:
        # No connection is made (min_size=0): the refusal comes before any read.
        pool = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0)
        reader = IndexReader(pool, asyncio.get_running_loop(), 5)
        try:
            with pytest.raises(RuntimeError, match="deadlock"):
                reader.run(_read)
            # From another thread the same reader reads (here: a read that needs no connection).
            assert await asyncio.to_thread(reader.run, _read) == 1
        finally:
            await pool.close()

    asyncio.run(main())
