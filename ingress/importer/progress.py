"""How far an import is: a tqdm bar when stdout is a terminal, else a log line every few seconds."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from tqdm import tqdm  # type: ignore[import-untyped]
from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

from pipeline import log

_log = log.get(__name__)
MB = 1e6


@dataclass
class Counters:
    """What the import's threads have done; read by the display and the summary."""

    total: int
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    non_dicom: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, stored: int = 0, failed: int = 0, non_dicom: int = 0, size: int = 0) -> None:
        with self._lock:
            self.stored += stored
            self.failed += failed
            self.non_dicom += non_dicom
            self.bytes += size

    @property
    def done(self) -> int:
        return self.stored + self.failed + self.non_dicom

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rates(self) -> tuple[float, float]:
        """Files done a second, megabytes stored a second."""
        elapsed = max(self.elapsed, 1e-9)
        return self.done / elapsed, self.bytes / MB / elapsed


class Display(Protocol):
    def show(self, counters: Counters) -> None: ...


class Bar:
    """tqdm's bar: files done of those to do, files/s, ETA, and MB/s and failures after it."""

    def __init__(self, total: int) -> None:
        try:  # a terminal whose size is not set (0 x 0) would get no bar at all from tqdm
            size = os.get_terminal_size(sys.stdout.fileno())
            sized = size.columns > 0 and size.lines > 0
        except OSError:
            sized = False
        self._bar = tqdm(
            total=total,
            unit=" files",
            desc="import",
            file=sys.stdout,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 24,
            smoothing=0.1,
        )

    def show(self, counters: Counters) -> None:
        _, megabytes = counters.rates()
        self._bar.set_postfix_str(
            f"{megabytes:.1f} MB/s, {counters.failed + counters.non_dicom} failed", refresh=False
        )
        self._bar.update(counters.done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class LogLines:
    """A log line every ``every`` seconds: done of total, the rates, the failures so far."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._said = time.monotonic()

    def show(self, counters: Counters) -> None:
        if time.monotonic() - self._said < self._every:
            return
        self._said = time.monotonic()
        files, megabytes = counters.rates()
        left = counters.total - counters.done
        _log.info(
            "import_progress",
            done=counters.done,
            total=counters.total,
            files_per_s=round(files, 1),
            mb_per_s=round(megabytes, 2),
            eta_s=round(left / files) if files > 0 else None,
            failed=counters.failed + counters.non_dicom,
        )


@contextmanager
def display(total: int, every: float) -> Iterator[Display]:
    """The bar on a terminal (log lines meanwhile printed above it), else ``LogLines``."""
    if not sys.stdout.isatty():
        yield LogLines(every)
        return
    bar = Bar(total)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()
