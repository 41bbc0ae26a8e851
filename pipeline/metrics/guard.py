"""A metric that cannot be recorded costs the metric, never the work it measures: a value file's
mmap fails on a full disk, say, and the instance was stored all the same, the answer is sent all
the same. ``Recording`` keeps such a failure from its caller and logs it, at most once a minute
per metric (a full disk would otherwise log once per request).

No prometheus_client here: the SCP's and the web server's modules import this at module level,
before the metrics folder is prepared (see ``pipeline.metrics``)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from pipeline import log
from pipeline.retries import describe

_log = log.get(__name__)
LOG_EVERY_S = 60.0


class Recording:
    """``with recording:`` around a metric's update: an ``Exception`` in it is logged and dropped.

    An object per metric, reused, rather than a generator-based context manager: the read paths
    are benchmarked, and this costs two method calls."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.failures = 0
        self._logged_at: float | None = None
        self._lock = threading.Lock()  # the SCP records from pynetdicom's threads

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            due = self._logged_at is None or now - self._logged_at >= LOG_EVERY_S
            if due:
                self._logged_at = now
            failures = self.failures
        if due:
            _log.warning("metric_not_recorded", metric=self.metric, failures=failures, error=describe(error))
        return True
