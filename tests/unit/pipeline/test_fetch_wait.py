"""The workers' fetch wait: Faust hard-codes 1500 ms; PACSFLOW_KAFKA_FETCH_WAIT_S replaces it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.app import create_app
from pipeline.settings import load


def _fetch_wait_ms(tmp_path: Path, **extra: str) -> int:
    return asyncio.run(_built_consumer_wait(tmp_path, extra))


async def _built_consumer_wait(tmp_path: Path, extra: dict[str, str]) -> int:
    settings = load(
        {
            "PACSFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9",
            "PACSFLOW_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
            "PACSFLOW_DATA_DIR": str(tmp_path),
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            **extra,
        }
    )
    app = create_app(settings)
    # The consumer the worker's thread would start: built, never started, so no broker is needed.
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    try:
        return int(consumer._fetch_max_wait_ms)
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # the thread's own loop, made when the thread was, never run


@pytest.mark.parametrize(("setting", "expected"), [("0.05", 50), ("0.25", 250), ("2", 2000)])
def test_the_setting_is_the_consumers_fetch_wait(tmp_path: Path, setting: str, expected: int) -> None:
    assert _fetch_wait_ms(tmp_path, PACSFLOW_KAFKA_FETCH_WAIT_S=setting) == expected


def test_left_empty_faust_keeps_its_own_default(tmp_path: Path) -> None:
    assert _fetch_wait_ms(tmp_path) == 1500
