"""A scrape's answer: every process's counters of the service, summed, and the gauges read now.

Gauges of state held elsewhere (the outboxes, the broker's offsets, the database) are read when a
scrape asks, each source under a short timeout: a source that does not answer leaves its gauges out
of this scrape, and ``pacsflow_scrape_source_up`` says which one, rather than the whole scrape failing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline import log, topics
from pipeline.metrics.folder import ENV
from pipeline.outbox import backlogs
from pipeline.retries import describe
from pipeline.settings import Settings
from pipeline.status import Offsets, offsets

_log = log.get(__name__)
SOURCE_TIMEOUT_S = 3.0
Family = Any
"""A prometheus_client ``Metric`` (imported late: see ``pipeline.metrics``)."""
Source = Callable[[], Awaitable[list[Family]]]


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Family:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, labels=list(labels))


def outbox_families(settings: Settings, *services: str) -> list[Family]:
    """Depth and oldest event's age of each service's outboxes, summed per service (the oldest: the
    oldest of all)."""
    depth = _gauge(
        "pacsflow_outbox_events", "Events spooled in the service's outboxes, not yet published", ["service"]
    )
    age = _gauge(
        "pacsflow_outbox_oldest_age_seconds",
        "Age of the oldest event waiting in the service's outboxes (0: none waits; absent: unknown, "
        "an event spooled by a version before this gauge waits first)",
        ["service"],
    )
    for service in services:
        found = backlogs(settings.outbox_dir, service)
        depth.add_metric([service], sum(b.pending for b in found.values()))
        waiting = [b.oldest for b in found.values() if b.pending]
        if not waiting:
            age.add_metric([service], 0.0)
        elif None not in waiting:  # an undated head: any age shown would be too young
            age.add_metric([service], max(0.0, time.time() - min(t for t in waiting if t is not None)))
    return [depth, age]


def offsets_families(found: Offsets) -> list[Family]:
    """The worker group's progress per topic and partition, and the dead letters."""
    end = _gauge("pacsflow_topic_end_offset", "End offset of each partition", ["topic", "partition"])
    committed = _gauge(
        "pacsflow_consumer_committed_offset",
        "The worker group's committed offset of each partition it has committed",
        ["topic", "partition"],
    )
    lag = _gauge(
        "pacsflow_consumer_lag",
        "End offset minus the worker group's committed offset (an upper bound on Tansu, whose offsets "
        "are not dense)",
        ["topic", "partition"],
    )
    # The worker's agents read these: a partition the group has not committed yet is behind by all
    # it holds. Of the other topics (Doris's, the dead letters), only what the group did commit.
    consumed = {topics.STORAGE_QUEUE, topics.DICOM_STATE_QUEUE, topics.CONVERSION_QUEUE}
    for tp in found.partitions:
        labels = [tp.topic, str(tp.partition)]
        end.add_metric(labels, found.ends[tp])
        offset = found.committed[tp]
        if offset is not None:
            committed.add_metric(labels, offset)
        behind = found.lag(tp)
        if behind is not None or tp.topic in consumed:
            lag.add_metric(labels, found.ends[tp] if behind is None else behind)
    dead = _gauge(
        "pacsflow_dead_letters",
        f"Records in {topics.STORAGE_DLQ}, the dead-letter topic: its end minus beginning offsets, "
        "an upper bound (exact on Kafka; Tansu's offsets are not dense). `pacsflow status` counts them",
    )
    dead.add_metric([], found.dead_letters)
    return [end, committed, lag, dead]


def database_families(series: dict[str, int], conversions: dict[str, int]) -> list[Family]:
    metadata = _gauge(
        "pacsflow_series_metadata",
        "Series by the state of their metadata files (pending: to regenerate)",
        ["state"],
    )
    for state in ("pending", "failed", "done"):
        metadata.add_metric([state], series.get(state, 0))
    converting = _gauge("pacsflow_conversions", "Instances whose viewer copy is pending or failed", ["state"])
    for state in ("pending", "failed"):
        converting.add_metric([state], conversions.get(state, 0))
    return [metadata, converting]


async def broker_source(settings: Settings) -> list[Family]:
    return offsets_families(await offsets(settings))


async def gather(sources: dict[str, Source], timeout_s: float = SOURCE_TIMEOUT_S) -> list[Family]:
    """Every source's families, each within ``timeout_s``; ``pacsflow_scrape_source_up`` per source."""

    async def one(name: str, source: Source) -> list[Family] | None:
        try:
            async with asyncio.timeout(timeout_s):
                return await source()
        except Exception as exc:  # a source away is a gauge at 0, never a failed scrape
            _log.warning("metrics_source_failed", source=name, error=describe(exc))
            return None

    results = await asyncio.gather(*(one(name, source) for name, source in sources.items()))
    up = _gauge(
        "pacsflow_scrape_source_up", "Whether a source of this scrape's gauges answered in time", ["source"]
    )
    families: list[Family] = []
    for name, result in zip(sources, results, strict=True):
        up.add_metric([name], 0 if result is None else 1)
        families += result or []
    return [*families, up] if sources else families


def render(families: Iterable[Family]) -> bytes:
    """The text exposition: the service's processes' metrics (summed, multiprocess mode) or this
    process's (none prepared, as in tests), then ``families``."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = os.environ.get(ENV)
    if directory and Path(directory).is_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Fixed(list(families)))
    return generate_latest(registry) + generate_latest(extra)


class _Fixed:
    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterable[Family]:
        return self._families

    def describe(self) -> Iterable[Family]:
        return ()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
