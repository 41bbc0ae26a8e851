"""Metrics of a service run as several processes (``pipeline.metrics``): each process writes its
own files, whichever answers a scrape sums them all; what the labels say."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.ingest import StoreStatus
from pipeline.metrics.instruments import method_label, outcome, route_label

ROOT = Path(__file__).resolve().parents[3]

_PREPARED = """
import sys
from pipeline import settings
from pipeline.metrics import folder
folder.prepare(settings.load(), "scp")
"""
WRITER = (
    _PREPARED
    + """
from pipeline.metrics import instruments
counts = instruments.Stores("scp")
for _ in range(int(sys.argv[1])):
    counts.count("alpha", 0, 1000)
    instruments.CSTORE_SECONDS.observe(0.004)
counts.count("alpha", 0xC001)
print("written", flush=True)
sys.stdin.read()  # alive until the test closes stdin
"""
)
SCRAPER = (
    _PREPARED
    + """
from pipeline.metrics import exposition
sys.stdout.write(exposition.render([]).decode())
"""
)


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PACSFLOW_DATA_DIR": str(tmp_path / "var")}


@contextmanager
def _writer(tmp_path: Path, stores: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(stores)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(tmp_path),
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "written\n"
        yield process
    finally:
        _end(process)


def _end(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    if not process.stdin.closed:
        process.stdin.close()  # the writer's cue to exit
        assert process.wait(timeout=30) == 0
        process.stdout.close()


def _scrape(tmp_path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = subprocess.run(
        [sys.executable, "-c", SCRAPER],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(tmp_path),
        check=True,
    ).stdout
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


STORED = (
    "pacsflow_instances_stored_total",
    (("reason", ""), ("service", "scp"), ("status", "stored"), ("tenant", "alpha")),
)
REFUSED = (
    "pacsflow_instances_stored_total",
    (("reason", "missing_attribute"), ("service", "scp"), ("status", "refused"), ("tenant", "alpha")),
)
BYTES = ("pacsflow_received_bytes_total", (("service", "scp"), ("tenant", "alpha")))
LATENCIES = ("pacsflow_cstore_seconds_count", ())


def test_a_scrape_sums_every_process_of_the_service(tmp_path: Path) -> None:
    with _writer(tmp_path, 3) as first, _writer(tmp_path, 5):
        # A third process answers: each process's files are summed, not its own alone.
        scraped = _scrape(tmp_path)
        assert scraped[STORED] == 8
        assert scraped[REFUSED] == 2
        assert scraped[BYTES] == 8000
        assert scraped[LATENCIES] == 8
        _end(first)
        # A process that ended keeps its counts while the service runs: totals never fall.
        after = _scrape(tmp_path)
        assert (after[STORED], after[LATENCIES]) == (8, 8)
    # The whole service stopped: the next start begins at zero, as Prometheus expects of a restart.
    with _writer(tmp_path, 1):
        restarted = _scrape(tmp_path)
        assert (restarted[STORED], restarted[BYTES], restarted[LATENCIES]) == (1, 1000, 1)


UNWRITABLE = (
    _PREPARED
    + """
import os, shutil
from pipeline.metrics import instruments
from pipeline.metrics.guard import Recording
counts = instruments.Stores("scp")
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # as good as a full disk: no file can be made
try:
    counts.count("alpha", 0, 1000)
except OSError as exc:
    print("unguarded:", type(exc).__name__, flush=True)
recording = Recording("scp_store")
for _ in range(3):
    with recording:
        counts.count("beta", 0, 1000)
print("carried on after", recording.failures, flush=True)
"""
)


def test_a_metric_that_cannot_be_written_is_logged_once_and_the_caller_carries_on(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", UNWRITABLE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_env(tmp_path), "PACSFLOW_LOG_FORMAT": "json"},
    )
    assert result.returncode == 0, result.stderr
    assert "unguarded: FileNotFoundError" in result.stdout  # the failure is real
    assert "carried on after 3" in result.stdout
    output = result.stdout + result.stderr
    assert output.count("metric_not_recorded") == 1, output  # once a minute, not once a store


def test_no_service_module_imports_prometheus_client_before_the_folder_is_set() -> None:
    probe = (
        "import sys, pipeline.cli, pipeline.worker, pipeline.dev.stack, ingress.scp.server, egress.wado.app; "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


def test_preparing_after_prometheus_client_was_imported_is_refused(tmp_path: Path) -> None:
    late = "import prometheus_client\n" + _PREPARED
    result = subprocess.run(
        [sys.executable, "-c", late], capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path)
    )
    assert result.returncode != 0
    assert "prometheus_client was imported before the metrics folder was set" in result.stderr


@pytest.mark.parametrize(
    ("status", "labels"),
    [
        (StoreStatus.SUCCESS, ("stored", "")),
        (StoreStatus.MISSING_ATTRIBUTE, ("refused", "missing_attribute")),
        (StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, ("refused", "dataset_does_not_match_sop_class")),
        (StoreStatus.OUT_OF_RESOURCES, ("failed", "out_of_resources")),
        (StoreStatus.PROCESSING_FAILURE, ("failed", "processing_failure")),
        (0xC0FF, ("failed", "processing_failure")),  # no status of ours: a bug, not a new label
    ],
)
def test_a_store_status_is_a_few_label_values(status: int, labels: tuple[str, str]) -> None:
    assert outcome(status) == labels


def test_a_tenant_route_is_counted_as_the_default_tenant_one() -> None:
    study = "/dicomweb/studies/{study}/series"
    assert route_label("/tenants/{tenant}" + study) == study
    assert route_label(study) == study
    assert route_label("/tenants/{tenant}/ready") == "/tenants/{tenant}/ready"  # not DICOMweb: kept
    assert route_label(None) == "unmatched"


@dataclass(frozen=True)
class _Resource:
    canonical: str


def test_a_method_the_client_invents_is_labelled_other() -> None:
    from pipeline.metrics.instruments import HTTP_SECONDS, Routes

    assert [method_label(m) for m in ("GET", "HEAD", "POST", "DELETE", "OPTIONS")] == [
        "GET",
        "HEAD",
        "POST",
        "DELETE",
        "OPTIONS",
    ]
    routes, resource = Routes(), _Resource("/method-test")  # a route of its own
    for method in ("BREW", "get", "X" * 200, "PUT", "GET"):
        routes.observe(resource, method, 0.01)
    counts = {
        sample.labels["method"]: sample.value
        for family in HTTP_SECONDS.collect()
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels.get("route") == "/method-test"
    }
    assert counts == {"other": 4, "GET": 1}


def test_lag_is_end_minus_committed_and_a_worker_topic_never_committed_is_behind_by_all() -> None:
    from aiokafka import TopicPartition

    from pipeline import topics
    from pipeline.metrics.exposition import offsets_families
    from pipeline.status import Offsets

    storage, converting, doris = (
        TopicPartition(topics.STORAGE_QUEUE, 0),
        TopicPartition(topics.CONVERSION_QUEUE, 1),
        TopicPartition(topics.LOG_QUEUE, 0),
    )
    found = Offsets(
        frozenset(topics.ALL),
        [storage, converting, doris],
        {storage: 30, converting: 5, doris: 9},
        {storage: 22, converting: None, doris: None},
        dead_letters=3,
    )
    samples = {
        (s.name, s.labels.get("topic"), s.labels.get("partition")): s.value
        for family in offsets_families(found)
        for s in family.samples
    }
    assert samples[("pacsflow_consumer_lag", topics.STORAGE_QUEUE, "0")] == 8
    assert samples[("pacsflow_consumer_lag", topics.CONVERSION_QUEUE, "1")] == 5
    assert ("pacsflow_consumer_lag", topics.LOG_QUEUE, "0") not in samples  # Doris's, not the worker's
    assert samples[("pacsflow_consumer_committed_offset", topics.STORAGE_QUEUE, "0")] == 22
    assert samples[("pacsflow_dead_letters", None, None)] == 3
