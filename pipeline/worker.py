"""The ``pacsflow worker`` process: a Faust worker running the agents and tables."""

from __future__ import annotations

import faust

from pipeline import lifecycle, log
from pipeline.app import create_app
from pipeline.settings import Settings

_log = log.get(__name__)


class Worker(faust.Worker):
    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        _log.info("worker_started", agents=len(self.app.agents))
        lifecycle.notify_ready()


def run(settings: Settings) -> None:
    app = create_app(settings)
    worker = Worker(
        app,
        loglevel=settings.log_level.upper(),
        override_logging=False,  # keep structlog's handler
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
