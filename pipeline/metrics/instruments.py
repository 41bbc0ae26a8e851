"""The metrics pacsflow's services count as things happen. Import only after ``folder.prepare``.

Each recording looks its labelled child up in a dict of its own rather than through ``labels()``
(a lock and a tuple check): the read paths are benchmarked, and a request pays only the observe.
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import Counter, Histogram

from pipeline.ingest import StoreStatus

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

STORED = Counter(
    "pacsflow_instances_stored",
    "Instances received, by way in (scp, stow), tenant and outcome: stored, refused (the "
    "instance's fault) or failed (ours); reason is the DICOM status's name",
    ["service", "tenant", "status", "reason"],
)
RECEIVED_BYTES = Counter(
    "pacsflow_received_bytes",
    "Bytes of the instances stored (their Part 10 files' sizes), by way in and tenant",
    ["service", "tenant"],
)
CSTORE_SECONDS = Histogram(
    "pacsflow_cstore_seconds",
    "Time from a C-STORE request's dataset received to its answer (checks, durable write, outbox)",
    buckets=_LATENCY_BUCKETS,
)
HTTP_SECONDS = Histogram(
    "pacsflow_http_request_seconds",
    "Time from a request reaching the web server's middleware to its answer sent, by route pattern "
    "(a tenant's /tenants/{tenant}/dicomweb counted as /dicomweb) and method",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)

_FAILED = frozenset({StoreStatus.PROCESSING_FAILURE, StoreStatus.OUT_OF_RESOURCES})
_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "OPTIONS"})
_TENANT_PREFIX = re.compile(r"^/tenants/\{tenant\}(?=/dicomweb)")


def outcome(status: int) -> tuple[str, str]:
    """The ``status`` and ``reason`` labels of a store's DICOM status: a handful of values each."""
    if status == StoreStatus.SUCCESS:
        return "stored", ""
    try:
        known = StoreStatus(status)
    except ValueError:
        return "failed", "processing_failure"
    return ("failed" if known in _FAILED else "refused"), known.name.lower()


class Stores:
    """Counts the instances one way in (``scp``, ``stow``) receives."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._counts: dict[tuple[str, int], Any] = {}
        self._bytes: dict[str, Any] = {}

    def count(self, tenant: str, status: int, size: int = 0) -> None:
        """One instance received, answered with ``status``; ``size``: its stored file's, if stored."""
        counter = self._counts.get((tenant, status))
        if counter is None:
            counter = STORED.labels(self._service, tenant, *outcome(status))
            self._counts[(tenant, status)] = counter
        counter.inc()
        if size:
            received = self._bytes.get(tenant)
            if received is None:
                received = self._bytes[tenant] = RECEIVED_BYTES.labels(self._service, tenant)
            received.inc(size)


def method_label(method: str) -> str:
    """The ``method`` label: the client names the method, and each name would be a series."""
    return method if method in _METHODS else "other"


def route_label(canonical: str | None) -> str:
    if canonical is None:
        return "unmatched"
    return _TENANT_PREFIX.sub("", canonical)


class Routes:
    """Times HTTP requests by their route's pattern: a few patterns, whatever the paths."""

    def __init__(self) -> None:
        self._timers: dict[tuple[object, str], Any] = {}

    def observe(self, resource: Any, method: str, seconds: float) -> None:
        """``resource``: the aiohttp resource the request matched (None: none)."""
        timer = self._timers.get((resource, method))
        if timer is None:
            method = method_label(method)  # and so one entry for every method unknown
            timer = self._timers.get((resource, method))
        if timer is None:
            canonical = resource.canonical if resource is not None else None
            timer = HTTP_SECONDS.labels(route_label(canonical), method)
            self._timers[(resource, method)] = timer
        timer.observe(seconds)
