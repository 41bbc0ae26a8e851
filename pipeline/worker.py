"""The ``pacsflow worker`` process: a Faust worker running the agents and tables."""

from __future__ import annotations

from typing import Any

import faust

from pipeline import lifecycle, log
from pipeline.app import create_app
from pipeline.metrics import folder
from pipeline.retries import until_it_works
from pipeline.settings import Settings
from pipeline.topics import BROKER_FAILURES, ensure_topics

_log = log.get(__name__)
STOP_GRACE_S = 15.0
"""A healthy stop takes a second or two; past this one, the worker ends itself (see
``lifecycle.exit_if_stuck``). Its offsets are committed or not: either way, at least once."""


class Worker(faust.Worker):
    def __init__(self, settings: Settings, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        # Faust's progress spinner writes terminal escapes into the log stream, tty or not.
        self.spinner = None

    async def on_first_start(self) -> None:
        # Our topics must exist before the agents subscribe: a broker may auto-create a topic a
        # consumer asks for, with its own partition count, and Tansu then stalls the first
        # produce to it for a whole request timeout.
        async for attempt in until_it_works("broker_unreachable", BROKER_FAILURES):
            with attempt:
                created = await ensure_topics(self.settings)
        if created:
            _log.info("topics_created", topics=created, partitions=self.settings.kafka_partitions)
        await super().on_first_start()

    async def on_stop(self) -> None:
        _log.info("worker_stopping", grace_s=STOP_GRACE_S)
        lifecycle.exit_if_stuck(STOP_GRACE_S, "the worker")
        await super().on_stop()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        _log.info("worker_started", agents=len(self.app.agents))
        lifecycle.notify_ready()


def run(settings: Settings) -> None:
    folder.prepare(settings, "worker")  # before anything imports prometheus_client (pipeline.metrics)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only its own folder
    app = create_app(settings)
    worker = Worker(
        settings,
        app,
        loglevel=settings.log_level.upper(),
        override_logging=False,  # keep structlog's handler
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
