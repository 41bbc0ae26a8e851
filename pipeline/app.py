"""``create_app(settings) -> faust.App``: the worker's app; agents and tables import it, never the reverse."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as kafka_driver

from pipeline import listeners
from pipeline.agents import conversion, index, metadata
from pipeline.agents.database import Database
from pipeline.cache import Cache
from pipeline.metrics import exposition, probes
from pipeline.settings import Settings
from pipeline.status import database_counts
from pipeline.tables.metadata_window import cleanup_interval


class _Opened(faust.Service):
    """The cache, opened when the worker starts and closed when it stops."""

    def __init__(self, cache: Cache) -> None:
        super().__init__()
        self._cache = cache

    async def on_start(self) -> None:
        await self._cache.start()

    async def on_stop(self) -> None:
        await self._cache.stop()


class _Probes(faust.Service):
    """``/metrics``, ``/ready`` and ``/health`` of the worker on ``PACSFLOW_WORKER_METRICS_PORT``.

    Ready: the database and the broker answer, and this worker has partitions assigned (a worker
    left without any, there being more workers than partitions, does nothing, and says so)."""

    def __init__(self, app: faust.App, settings: Settings, database: Database) -> None:
        super().__init__()
        self._app = app
        self._settings = settings
        self._database = database
        self._runner: Any = None

    async def _database_answers(self) -> None:
        await probes.database_answers(await self._database.pool())

    async def _broker_answers(self) -> None:
        await probes.broker_answers(self._settings)

    async def _partitions_assigned(self) -> None:
        if not self._app.consumer.assignment():
            raise RuntimeError("no partitions assigned to this worker (yet)")

    async def _database_gauges(self) -> list[exposition.Family]:
        return exposition.database_families(*await database_counts(await self._database.pool()))

    async def _broker_gauges(self) -> list[exposition.Family]:
        return await exposition.broker_source(self._settings)

    async def on_start(self) -> None:
        settings = self._settings
        checks: dict[str, probes.Check] = {
            "database": self._database_answers,
            "broker": self._broker_answers,
            "partitions": self._partitions_assigned,
        }
        sources = {"broker": self._broker_gauges, "database": self._database_gauges}
        sock = listeners.bind(listeners.worker_metrics(settings))
        self._runner = await probes.start(probes.application("worker", checks, sources), sock)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _transport_waiting(fetch_wait_ms: int) -> type[kafka_driver.Transport]:
    """Faust's aiokafka transport with the consumer's fetch wait set: Faust hard-codes 1500 ms, and
    a broker that holds every fetch for the whole wait (the embedded one) then delays each record
    by up to that long."""

    class WaitingThread(kafka_driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: kafka_driver.Transport) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # read by start(), which has not run yet
            return consumer

    class WaitingConsumer(kafka_driver.Consumer):
        def _new_consumer_thread(self) -> kafka_driver.AIOKafkaConsumerThread:
            return WaitingThread(self, loop=self.loop, beacon=self.beacon)

    class WaitingTransport(kafka_driver.Transport):
        Consumer = WaitingConsumer

    return WaitingTransport


def create_app(settings: Settings) -> faust.App:
    options: dict[str, Any] = {}
    # Unset: the client's defaults, which a real Kafka cluster wants. An embedded Tansu broker only
    # forms a group after a whole session timeout, so `pacsflow dev` sets these short.
    if settings.kafka_session_timeout_s is not None:
        options["broker_session_timeout"] = settings.kafka_session_timeout_s
    if settings.kafka_heartbeat_interval_s is not None:
        options["broker_heartbeat_interval"] = settings.kafka_heartbeat_interval_s
    app = faust.App(
        "pacsflow",
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        datadir=str(settings.data_dir / "worker"),
        store="memory://",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication,
        broker_request_timeout=max(settings.kafka_request_timeout_s, 10.0),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        table_cleanup_interval=cleanup_interval(settings.metadata_window_s),
        # The only table is in memory (see pipeline/tables/metadata_window.py): nothing to stand by.
        table_standby_replicas=0,
        **options,
    )
    if settings.kafka_fetch_wait_s is not None:
        # Before any agent or topic is declared: they reach the transport through the conductor.
        waiting = _transport_waiting(int(settings.kafka_fetch_wait_s * 1000))
        app.transport = waiting(app.conf.broker_consumer, app)
    database = Database(settings.database_url)
    cache = Cache(settings.redis_url, settings.redis_prefix)
    app.add_dependency(database)
    app.add_dependency(_Opened(cache))
    if settings.worker_metrics_port:
        app.add_dependency(_Probes(app, settings, database))
    index.register(app, settings, database, cache)
    metadata.register(app, settings, database, cache)
    conversion.register(app, settings, database, cache)
    return app
