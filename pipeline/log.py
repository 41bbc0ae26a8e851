"""structlog set-up: JSON lines when stdout is not a terminal, a readable console otherwise.

Context (tenant, trace id, SOP instance UID) is bound with ``structlog.contextvars`` at the edge
(an SCP handler, a request, an agent iteration) and appears on every line logged inside it.
Libraries that log through the standard library (pynetdicom, aiokafka, faust) go through the same
renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

from pipeline.settings import Settings

# Libraries whose INFO lines are per-PDU or per-request chatter; their warnings still show.
_QUIET = ("pynetdicom", "aiokafka", "kafka", "faust", "mode", "aiohttp.access", "asyncio")


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure(settings: Settings, service: str) -> None:
    json_lines = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if json_lines:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service, node=settings.node_id)


def get(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
