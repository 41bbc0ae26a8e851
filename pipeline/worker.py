"""The ``pacsflow worker`` process: a Faust worker running the agents and tables."""

from __future__ import annotations

from typing import Any

import faust

from pipeline import lifecycle, log
from pipeline.app import create_app
from pipeline.settings import Settings

_log = log.get(__name__)


class Worker(faust.Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's progress spinner writes terminal escapes into the log stream, tty or not.
        self.spinner = None

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        _log.info("worker_started", agents=len(self.app.agents))
        lifecycle.notify_ready()


def run(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only its own folder
    app = create_app(settings)
    worker = Worker(
        app,
        loglevel=settings.log_level.upper(),
        override_logging=False,  # keep structlog's handler
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
