"""The metadata window: a tumbling-window table counting each series' index writes.

Keyed by ``<tenant>/<study>/<series>`` (neither a tenant id nor a UID holds a ``/``). When a
window closes, its callback gets the series and how many writes the window saw; the series is
regenerated once for them all. Windows follow the wall clock: what counts is when the index
wrote, not when the modality sent. A window closes ``CLOSE_AFTER_S`` after it
ends, seen by Faust's cleanup timer (``table_cleanup_interval``, set from the window length in
``cleanup_interval``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from faust.types.tables import WindowWrapperT

from pipeline.settings import Settings

NAME = "metadata_window"
CLOSE_AFTER_S = 0.05


def series_key(tenant: str, study: str, series: str) -> str:
    return f"{tenant}/{study}/{series}"


def parse_series_key(key: str) -> tuple[str, str, str]:
    tenant, study, series = key.split("/")
    return tenant, study, series


def cleanup_interval(window_s: float) -> float:
    """How often Faust looks for closed windows: a tenth of the window, 0.05 s to 1 s."""
    return min(1.0, max(0.05, window_s / 10))


class _WindowTable(faust.Table[str, int]):
    """A tumbling-window table kept in memory only, whose windows close in every partition.

    - No changelog is written. The window's state is seconds of counts that ``dicom_json_meta``
      stands in for (a lost window is found by the overdue sweep), and a changelog with records
      makes a restarted worker recover the table, during which faust-streaming 0.15 can lose
      its place in the agents' input partitions: a worker killed mid-stream and restarted here
      left 70 of 270 storage events unindexed until the next rebalance.
    - faust remembers the start of the last window it closed in *any* partition and skips later
      keys whose window starts no later, so when two partitions hold a window with the same start
      only the first one's keys would reach ``on_window_close``. Each key is popped from the
      table as it is closed, so nothing closes twice without that guard.
    """

    def on_key_set(self, key: Any, value: Any) -> None:
        self._maybe_set_key_ttl(key, self.partition_for_key(key) or 0)

    def on_key_del(self, key: Any) -> None:
        self._maybe_del_key_ttl(key, self.partition_for_key(key) or 0)

    @property
    def last_closed_window(self) -> float:
        return float("-inf")

    @last_closed_window.setter
    def last_closed_window(self, value: float) -> None:
        pass


def metadata_window(
    app: faust.App,
    settings: Settings,
    on_close: Callable[[str, str, str, int, float], Awaitable[None] | None],
) -> WindowWrapperT:
    """Declare the table on ``app``; ``on_close(tenant, study, series, writes, window_start)`` at
    each close (``window_start``: seconds since the epoch, a multiple of the window's length)."""

    def closed(key: tuple[str, tuple[float, float]], writes: Any) -> Awaitable[None] | None:
        tenant, study, series = parse_series_key(key[0])
        return on_close(tenant, study, series, int(writes or 0), float(key[1][0]))

    table = app.tables.add(
        _WindowTable(
            app,
            name=NAME,
            default=int,
            beacon=app.tables.beacon,
            partitions=settings.kafka_partitions,
            on_window_close=closed,
            help="index writes per series and metadata window",
        )
    )
    windowed = table.tumbling(settings.metadata_window_s, expires=CLOSE_AFTER_S)
    return cast(WindowWrapperT, windowed.relative_to(_wall_clock))  # type: ignore[attr-defined]


def _wall_clock(event: Any = None) -> float:
    # Not `relative_to_now()`: inside a stream, faust takes "now" to be the latest window end the
    # partition has seen, so every write would land in one window near 1970 that closes at once.
    return time.time()
