"""The worker's ``/ready`` and ``/health`` (``pipeline.metrics.probes``): not ready, and why, while
its database is stopped; ready again once it is back, without a restart. And what its broker source
(``pipeline.status.offsets``) costs a scrape: no record read, no consumer left open."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline import settings as settings_module
from pipeline import topics
from pipeline.dev import postgres
from pipeline.status import offsets
from pipeline.stores.postgres import migrate
from tests.conftest import WorkerFactory
from tests.support.services import Broker, PostgresServer, free_port, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "pg").start()
    asyncio.run(migrate(postgres.dsn(server.port)))
    yield server
    server.stop()


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ready_is_503_naming_the_database_while_it_is_stopped(
    broker: Broker, own_postgres: PostgresServer, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    port = free_port()
    start_worker(
        broker.bootstrap, postgres.dsn(own_postgres.port), tmp_path / "storage", worker_metrics_port=str(port)
    )
    ready = f"http://127.0.0.1:{port}/ready"
    wait_for(lambda: _get(ready)[0] == 200, 60, "the worker ready (database, broker, partitions)")

    own_postgres.stop()
    status, answer = _get(ready)
    assert status == 503
    failing = answer["failing"]
    assert isinstance(failing, dict) and set(failing) == {"database"} and failing["database"]
    assert _get(f"http://127.0.0.1:{port}/health")[0] == 200  # alive: a restart would not help

    own_postgres.start()
    wait_for(lambda: _get(ready)[0] == 200, 60, "the worker ready again once the database is back")


def _broker_settings(broker: Broker, tmp_path: Path) -> settings_module.Settings:
    return settings_module.load(
        {"PACSFLOW_DATA_DIR": str(tmp_path / "var"), "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap}
    )


def test_a_scrape_takes_the_dead_letters_from_the_offsets_without_reading_them(
    own_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _broker_settings(own_broker, tmp_path)

    async def dead_letters(count: bool) -> int:
        await topics.ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for n in range(3):
                await producer.send_and_wait(topics.STORAGE_DLQ, b"{}", key=str(n).encode())
        finally:
            await producer.stop()
        return (await offsets(settings, count_dead_letters=count)).dead_letters

    counted = asyncio.run(dead_letters(count=True))
    assert counted == 3  # `pacsflow status`: read, exact

    # A scrape's must not read the topic: on Kafka that grows with it, on Tansu it waits 2 s.
    async def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a scrape read the dead-letter topic")

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", refused)
    monkeypatch.setattr(AIOKafkaConsumer, "getone", refused)
    bound = asyncio.run(dead_letters(count=False))
    assert bound >= 6  # six in all now; end minus beginning offsets may count more on Tansu


def test_a_scrape_cancelled_while_connecting_stops_its_consumer(
    own_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _broker_settings(own_broker, tmp_path)
    started: list[AIOKafkaConsumer] = []
    stopped: list[AIOKafkaConsumer] = []
    start, stop = AIOKafkaConsumer.start, AIOKafkaConsumer.stop

    async def starting(self: AIOKafkaConsumer) -> None:
        started.append(self)
        await start(self)

    async def stopping(self: AIOKafkaConsumer) -> None:
        stopped.append(self)
        await stop(self)

    monkeypatch.setattr(AIOKafkaConsumer, "start", starting)
    monkeypatch.setattr(AIOKafkaConsumer, "stop", stopping)

    async def scrape() -> None:
        # Paused: the connection is accepted but never answered, so the start is what times out.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await offsets(settings)

    own_broker.pause()
    try:
        asyncio.run(scrape())
    finally:
        own_broker.resume()
    assert len(started) == 1
    assert stopped == started
