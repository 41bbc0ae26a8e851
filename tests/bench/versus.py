"""`make bench`: pacsflow and Orthanc side by side, in one run, on the same generated data.

Both servers start empty on loopback ports of their own: `pacsflow dev` (embedded broker and
PostgreSQL, every file fsynced) and Debian's Orthanc with its DICOMweb plugin (a temporary
configuration: `SeriesMetadata` and `StudiesMetadata` `Full`, `SyncStorageArea` on, HTTP refused
to other hosts, C-STORE accepted only from 127.0.0.1; `TCP_NODELAY=1` for Orthanc and storescu,
as Orthanc's users are told). Every load loop is bounded in count and
time; latencies are one request at a time (a bounded aiohttp client), throughput is wrk with 16
connections. Where a metric is measured twice the servers alternate and the median is kept.

Reported: ingest with dcmtk's storescu on 1 and 4 associations, ingest-to-visible, the QIDO-RS
study list, series metadata (first request, warm, 16 connections, and its growth with series
size), frames (single-frame and frame N of a multi-frame instance), whole-series retrieve,
STOW-RS (512x512 CT, 10 instances a request, 1 and 4 requests in flight, a new series each
round, the servers alternating), pacsflow's store-acknowledged -> visible latency in QIDO-RS and
in the series metadata for C-STORE and STOW-RS (tests/bench/visibility.py), and the peak memory
of each server's processes. A table (ratio > 1: pacsflow is better) is printed and written, with
everything measured, to tests/bench/results/versus-<time>.json.

    python -m tests.bench.versus [--big 500] [--growth 100,500,2000] [--profile retrieve,frames,...]
    python -m tests.bench.versus --only stow,latency [--stow 500] [--rounds 3] [--latency 50]
    python -m tests.bench.versus --quick     # tiny sizes: checks the bench runs, figures mean nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import asyncpg
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, JPEGLSLossless, MRImageStorage
from pynetdicom import AE

from pipeline.settings import load as load_settings
from tests.bench import stow, visibility
from tests.bench.read import OHIF_FRAMES, OHIF_STUDY_LIST, WRK, load, pct, wrk
from tests.support import dicomdata
from tests.support.services import DCMTK, free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "var" / "bench" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SEED = 20261124
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# Debian's dcmtk (storescu, and Orthanc's DICOM server) leaves Nagle's algorithm on unless told:
# every C-STORE would then wait for a delayed ACK, about 10x slower. Orthanc's users are told to set it.
NO_NAGLE = {**os.environ, "TCP_NODELAY": "1"}


def say(message: str) -> None:
    print(message, flush=True)


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    study: str
    series: str
    count: int
    files: tuple[Path, ...]

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass
class DataSet:
    big: Series
    growth: dict[int, Series]
    multiframe: Series
    frames: int
    others: list[Series] = field(default_factory=list)

    def every(self) -> list[Series]:
        unique = {s.series: s for s in [self.big, *self.growth.values(), self.multiframe, *self.others]}
        return list(unique.values())


def _uid(*parts: int) -> str:
    return dicomdata.uid(SEED, *parts)


def _series(folder: Path, name: str, number: int, count: int, size: int, **kwargs: Any) -> Series:
    study, series = _uid(number), _uid(number, 1)
    target = folder / name
    files = sorted(target.glob("*.dcm"))
    if len(files) != count:  # cached between runs: the same seed makes the same files
        shutil.rmtree(target, ignore_errors=True)
        datasets = dicomdata.ct_series(study, series, count, rows=size, columns=size, **kwargs)
        files = dicomdata.write_all(datasets, target)
    return Series(name, study, series, count, tuple(files))


def _special(folder: Path, name: str, number: int, make: Callable[[str, str], list[Any]]) -> Series:
    study, series = _uid(number), _uid(number, 1)
    target = folder / name
    files = sorted(target.glob("*.dcm"))
    if not files:
        target.mkdir(parents=True, exist_ok=True)
        files = [dicomdata.write(ds, target / f"{i:05d}.dcm") for i, ds in enumerate(make(study, series))]
    # What "all visible" waits for: the series of the last file (a study list has many studies).
    headers = [dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
               for f in files]  # fmt: skip
    last = headers[-1]
    count = sum(1 for h in headers if h.SeriesInstanceUID == last.SeriesInstanceUID)
    return Series(name, str(last.StudyInstanceUID), str(last.SeriesInstanceUID), count, tuple(files))


def make_data(big: int, growth: Sequence[int], frames: int) -> DataSet:
    folder = DATA / f"seed{SEED}-big{big}-frames{frames}"
    say(f"data set (cached in {folder.relative_to(ROOT)}) ...")
    big_series = _series(folder, f"ct-{big}", 1, big, 512)
    grown = {}
    for n, count in enumerate(growth):
        # Metadata grows with headers, not pixels: series other than the big one are 64x64.
        grown[count] = big_series if count == big else _series(folder, f"ct-{count}", 10 + n, count, 64)

    def multiframe(study: str, series: str) -> list[Any]:
        ds = dicomdata.image(CTImageStorage, study, series, f"{series}.1", 1, rows=512, columns=512)
        ds.NumberOfFrames = frames
        pixels = (np.arange(512 * 512 * frames, dtype=np.uint32) * 7) % 4096
        ds.PixelData = pixels.astype("<u2").tobytes()
        return [ds]

    def mr(study: str, series: str) -> list[Any]:
        return dicomdata.series(
            dicomdata.SeriesSpec(study, series, "PAT-MR", "MR", 30), MRImageStorage, rows=256, columns=256
        )

    def compressed(study: str, series: str) -> list[Any]:
        out = []
        for ds in dicomdata.ct_series(study, series, 20, rows=512, columns=512):
            ds.compress(JPEGLSLossless, generate_instance_uid=False)
            out.append(ds)
        return out

    def study_list(study: str, series: str) -> list[Any]:
        return [
            dicomdata.image(CTImageStorage, f"{study}.{n}", f"{series}.{n}", f"{series}.{n}.1", 1,
                            patient_name=f"List^P{n:02d}", study_date=f"2025{1 + n % 12:02d}{1 + n % 28:02d}",
                            accession=f"L{n}")
            for n in range(50)
        ]  # fmt: skip

    others = [
        _special(folder, "mr", 3, mr),
        _special(folder, "jpegls", 4, compressed),
        _special(folder, "list", 5, study_list),
    ]
    data = DataSet(big_series, grown, _special(folder, f"mf-{frames}", 2, multiframe), frames, others)
    total = sum(s.count for s in data.every())
    say(f"  {total} instances, {sum(s.bytes for s in data.every()) / 1e6:.0f} MB")
    return data


# --- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    dicom_port: int
    http_port: int
    dicomweb: str
    process: subprocess.Popen[bytes]
    storage: Path
    peak_rss: int = 0
    peak_pss: int = 0
    peak_by_process: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """name [pid] -> peak (RSS, USS, PSS) in bytes."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How it was configured, printed beside the figures."""

    def pids(self) -> list[int]:
        """The server's process and all its descendants."""
        found, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    queue += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
        return found

    def memory(self) -> tuple[int, int]:
        """The memory of all its processes now: the sum of their RSS (a shared page counted once
        per process that maps it, as `ps` shows them) and of their PSS (a shared page divided
        among the processes sharing it: what the server as a whole holds). Keeps each process'
        peak RSS, USS (its private pages) and PSS by name."""
        rss_total = pss_total = 0
        for pid in self.pids():
            try:
                fields = {
                    line.split(":")[0]: int(line.split()[1]) * 1024
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
                }
            except (OSError, ValueError, IndexError):
                continue
            rss, pss = fields.get("Rss", 0), fields.get("Pss", 0)
            uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
            rss_total += rss
            pss_total += pss
            key = f"{_process_name(pid)} [{pid}]"
            before = self.peak_by_process.get(key, (0, 0, 0))
            self.peak_by_process[key] = (max(before[0], rss), max(before[1], uss), max(before[2], pss))
        return rss_total, pss_total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_pacsflow(work: Path, settings: Mapping[str, str] = MappingProxyType({})) -> tuple[Server, str]:
    dicom, http, postgres = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **settings,
        "PACSFLOW_DATA_DIR": str(work / "pacsflow"),
        "PACSFLOW_SCP_HOST": "127.0.0.1",
        "PACSFLOW_SCP_PORT": str(dicom),
        "PACSFLOW_HTTP_HOST": "127.0.0.1",
        "PACSFLOW_HTTP_PORT": str(http),
        "PACSFLOW_DEV_POSTGRES_PORT": str(postgres),
        "PACSFLOW_LOG_FORMAT": "json",
    }
    log = (work / "pacsflow.log").open("wb")
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "pacsflow"), "dev"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    server = Server("pacsflow", dicom, http, f"http://127.0.0.1:{http}/dicomweb", process,
                    work / "pacsflow" / "storage", settings=pacsflow_settings(env))  # fmt: skip
    wait_for(lambda: b"Ctrl-C" in (work / "pacsflow.log").read_bytes() or process.poll() is not None, 120,
             "pacsflow dev to be ready")  # fmt: skip
    if process.poll() is not None:
        raise SystemExit(f"pacsflow dev exited: {(work / 'pacsflow.log').read_text()[-3000:]}")
    return server, f"postgresql://postgres@127.0.0.1:{postgres}/pacsflow"


def pacsflow_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """What `pacsflow dev` runs with: the settings that bear on speed and memory, as it reads them
    (its own defaults for the embedded broker filled in), and what it makes durable."""
    settings = load_settings({**env, "PACSFLOW_KAFKA_BOOTSTRAP": "", "PACSFLOW_DATABASE_URL": ""})
    fetch_wait = env.get("PACSFLOW_KAFKA_FETCH_WAIT_S") or "0.05 (pacsflow dev's default, embedded broker)"
    return {
        "version": _commit(),
        "command": "pacsflow dev (embedded Tansu broker and PostgreSQL, no Redis)",
        "PACSFLOW_SCP_PROCESSES": settings.scp_processes,
        "PACSFLOW_HTTP_PROCESSES": settings.http_processes,
        "PACSFLOW_SCP_MAX_PDU": settings.scp_max_pdu,
        "PACSFLOW_KAFKA_PARTITIONS": settings.kafka_partitions,
        "PACSFLOW_KAFKA_FETCH_WAIT_S": fetch_wait,
        "PACSFLOW_METADATA_WINDOW_S": settings.metadata_window_s,
        "PACSFLOW_AUTH": settings.auth,
        "PACSFLOW_ANALYTICS": "on" if settings.analytics else "off",
        "durability": "each file and its folder fsynced, its event committed to the outbox (SQLite WAL, "
        "synchronous=FULL) before the C-STORE or STOW-RS answer",
    }


def orthanc_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    version = subprocess.run([str(ORTHANC), "--version"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    kept = {k: v for k, v in config.items() if k not in ("StorageDirectory", "IndexDirectory", "Plugins")}
    return {"version": version, "environment": "TCP_NODELAY=1", "plugin": ORTHANC_DICOMWEB.name, **kept}


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} (with uncommitted changes)" if dirty else commit


def start_orthanc(work: Path) -> Server:
    if not ORTHANC.exists() or not ORTHANC_DICOMWEB.exists():
        raise SystemExit(
            "Orthanc is not installed: `make bench` installs Debian's orthanc and orthanc-dicomweb"
        )
    dicom, http = free_port(), free_port()
    folder = work / "orthanc"
    folder.mkdir()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,  # HTTP from loopback only
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,  # C-STORE from the registered loopback modality only
        "DicomCheckModalityHost": True,
        "DicomModalities": {"bench": ["STORESCU", "127.0.0.1", 11113]},
        "SyncStorageArea": True,  # every file synced, as pacsflow does
        "StorageCompression": False,
        "HttpCompressionEnabled": True,
        "Plugins": [str(ORTHANC_DICOMWEB)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "SeriesMetadata": "Full",
            "StudiesMetadata": "Full",
        },
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = (work / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [str(ORTHANC), str(folder / "orthanc.json")],
        env=NO_NAGLE,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server("Orthanc", dicom, http, f"http://127.0.0.1:{http}/dicom-web", process, folder / "storage",
                    settings=orthanc_settings(config))  # fmt: skip
    wait_for(lambda: (port_open(http) and port_open(dicom)) or process.poll() is not None, 60, "Orthanc")
    if process.poll() is not None:
        raise SystemExit(f"Orthanc exited: {(work / 'orthanc.log').read_text()[-3000:]}")
    return server


# --- measurements -----------------------------------------------------------------------------


def storescu(server: Server, files: Sequence[Path], associations: int) -> float:
    """Seconds to send ``files`` on ``associations`` parallel associations."""
    groups = [list(files[i::associations]) for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                str(DCMTK / "storescu"),
                "-aet",
                "STORESCU",
                "-aec",
                "ANY",
                "-R",
                "127.0.0.1",
                str(server.dicom_port),
                *map(str, g),
            ],
            env=NO_NAGLE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for g in groups
        if g
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=900)
        if sender.returncode != 0:
            raise SystemExit(f"storescu to {server.name} failed: {err.decode()[-2000:]}")
    return time.perf_counter() - started


def send_as_stored(server: Server, files: Sequence[Path], syntax: str) -> None:
    """Compressed files on one association proposing only their syntax (storescu's ``-xy`` also
    proposes uncompressed ones, which an SCP may pick; storescu cannot then convert)."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="ANY")
    if not assoc.is_established:
        raise SystemExit(f"{server.name} refused an association for {syntax}")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0:
                raise SystemExit(f"{server.name} did not store {path}: {status}")
    finally:
        assoc.release()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read() or b"[]")


def visible(server: Server, series: Series) -> bool:
    last = f"instances?limit=1&offset={series.count - 1}"
    url = f"{server.dicomweb}/studies/{series.study}/series/{series.series}/{last}"
    try:
        return bool(get_json(url))
    except OSError:
        return False


def time_to_visible(server: Server, series: Sequence[Series], sent_at: float) -> float:
    wait_for(
        lambda: all(visible(server, s) for s in series), 300, f"{server.name} to show what was sent", 0.05
    )
    return time.perf_counter() - sent_at


async def _indexed_latencies(dsn: str) -> list[float]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM indexed_time - received_time) * 1000 AS ms FROM dicom_instance_meta"
        )
        return [float(r["ms"]) for r in rows]
    finally:
        await conn.close()


def latencies(url: str, count: int, headers: dict[str, str]) -> list[float]:
    spent, _, _ = asyncio.run(load(lambda _: url, count, 1, headers))
    return spent


@dataclass
class Row:
    metric: str
    unit: str
    pacsflow: float
    orthanc: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        if self.pacsflow <= 0 or self.orthanc <= 0:
            return float("nan")
        return self.pacsflow / self.orthanc if self.higher_is_better else self.orthanc / self.pacsflow


class Bench:
    def __init__(self, pacsflow: Server, orthanc: Server, requests: int) -> None:
        self.servers = (pacsflow, orthanc)
        self.requests = requests
        self.rows: list[Row] = []

    def add(self, metric: str, unit: str, values: tuple[float, float], higher_is_better: bool) -> None:
        row = Row(metric, unit, round(values[0], 2), round(values[1], 2), higher_is_better)
        self.rows.append(row)
        both = f"pacsflow {row.pacsflow} {unit}, Orthanc {row.orthanc} {unit}"
        say(f"  {metric}: {both} (ratio {row.ratio:.2f})")

    def alternate(self, measure: Callable[[Server], float], rounds: int = 2) -> tuple[float, float]:
        """Median of ``rounds`` measurements of each server, taken in turn."""
        seen: dict[str, list[float]] = {s.name: [] for s in self.servers}
        for _ in range(rounds):
            for server in self.servers:
                seen[server.name].append(measure(server))
        return statistics.median(seen["pacsflow"]), statistics.median(seen["Orthanc"])

    def load_metric(
        self, name: str, path: Callable[[Server], list[str]], headers: dict[str, str], mb_s: bool = False
    ) -> None:
        """p50, p99 and req/s one request at a time; req/s (and MB/s) at 16 connections."""
        p50: list[float] = []
        p99: list[float] = []
        rate: list[float] = []
        for server in self.servers:
            urls = path(server)
            spent, wall, _ = asyncio.run(load(lambda i, u=urls: u[i % len(u)], self.requests, 1, headers))  # type: ignore[misc]
            p50.append(pct(spent, 0.5))
            p99.append(pct(spent, 0.99))
            rate.append(len(spent) / wall)
        self.add(f"{name}: p50, one client", "ms", (p50[0], p50[1]), False)
        self.add(f"{name}: p99, one client", "ms", (p99[0], p99[1]), False)
        self.add(f"{name}: one client", "req/s", (rate[0], rate[1]), True)
        loads: dict[str, list[tuple[float, float, int]]] = {s.name: [] for s in self.servers}
        for _ in range(2):  # alternating; the median (of two: their mean) is kept
            for server in self.servers:
                loads[server.name].append(wrk(path(server), headers, seconds=4))
        both = [loads[s.name] for s in self.servers]
        rates = (statistics.median(r for r, _, _ in both[0]), statistics.median(r for r, _, _ in both[1]))
        self.add(f"{name}: 16 connections", "req/s", rates, True)
        if mb_s:
            volume = (
                statistics.median(m for _, m, _ in both[0]),
                statistics.median(m for _, m, _ in both[1]),
            )
            self.add(f"{name}: 16 connections", "MB/s", volume, True)


def ingest(bench: Bench, files: list[Path], series: list[Series], associations: int) -> None:
    """C-STORE rate, and how long until QIDO-RS shows everything: after the last store, and from
    the first byte sent."""
    size = sum(p.stat().st_size for p in files)
    seen: dict[str, tuple[float, float, float]] = {}
    for server in bench.servers:
        spent = storescu(server, files, associations)
        after = time_to_visible(server, series, time.perf_counter())
        seen[server.name] = (spent, after, spent + after)
        say(f"  {server.name}: {len(files)} instances on {associations} association(s) in {spent:.1f} s; "
            f"all visible {after:.2f} s after the last store")  # fmt: skip
    plural = "s" if associations > 1 else ""
    name = f"C-STORE, {associations} association{plural}"
    pacsflow, orthanc = seen["pacsflow"], seen["Orthanc"]
    bench.add(name, "instances/s", (len(files) / pacsflow[0], len(files) / orthanc[0]), True)
    bench.add(name, "MB/s", (size / pacsflow[0] / 1e6, size / orthanc[0] / 1e6), True)
    sent = f"{len(files)} sent on {associations} association{plural}"
    bench.add(f"{sent}: all visible in QIDO-RS, after the last store", "s", (pacsflow[1], orthanc[1]), False)
    bench.add(
        f"{sent}: all visible in QIDO-RS, from the first byte sent", "s", (pacsflow[2], orthanc[2]), False
    )


STOW_PER_REQUEST = 10
STOW_CONCURRENCY = (1, 4)


def _ct(study: str, series: str, number: int) -> Dataset:
    """An instance of the big series' kind (512x512 CT): what uploads and modalities send."""
    return dicomdata.image(CTImageStorage, study, series, f"{series}.{number}", number,
                           patient_id="PAT-CT", rows=512, columns=512)  # fmt: skip


def stow_series(number: int, count: int) -> tuple[Series, list[stow.Body]]:
    """``count`` instances of a new series, ``STOW_PER_REQUEST`` to a request."""
    study, series = _uid(number), _uid(number, 1)
    bodies = [
        stow.body([dicomdata.encode(_ct(study, series, n))
                   for n in range(first, min(first + STOW_PER_REQUEST, count + 1))])
        for first in range(1, count + 1, STOW_PER_REQUEST)
    ]  # fmt: skip
    return Series(f"stow-{number}", study, series, count, ()), bodies


def settled(server: Server, series: Series) -> bool:
    """All of ``series`` in its series metadata: pacsflow writes it after the fact, and that
    work must not overlap the next measurement."""
    url = f"{server.dicomweb}/studies/{series.study}/series/{series.series}/metadata"
    try:
        return len(get_json(url)) >= series.count
    except OSError:
        return False


@dataclass(frozen=True)
class Upload:
    seconds: float
    visible_after_s: float
    size: int

    def rate(self, count: int) -> float:
        return count / self.seconds

    def mb_s(self) -> float:
        return self.size / self.seconds / 1e6


def stow_phase(bench: Bench, count: int, rounds: int) -> dict[str, Any]:
    """STOW-RS as an uploader sends: ``STOW_PER_REQUEST`` instances a request, 1 and 4 requests
    in flight. Each round is a new series (Orthanc answers a copy of an instance it holds without
    storing it again), sent to one server then the other, the order alternating between rounds;
    before the next send, the server shows everything in QIDO-RS and in the series metadata."""
    seen: dict[str, Any] = {}
    for concurrency in STOW_CONCURRENCY:
        uploads: dict[str, list[Upload]] = {s.name: [] for s in bench.servers}
        for turn in range(rounds):
            series, bodies = stow_series(100 + 10 * concurrency + turn, count)
            for server in bench.servers if turn % 2 == 0 else bench.servers[::-1]:
                url = f"{server.dicomweb}/studies"
                seconds, spent = asyncio.run(stow.post_all(url, bodies, concurrency))
                after = time_to_visible(server, [series], time.perf_counter())
                what = f"{server.name}'s metadata of {series.name}"
                wait_for(lambda s=server, se=series: settled(s, se), 300, what, 0.1)
                uploads[server.name].append(Upload(seconds, after, sum(b.size for b in bodies)))
                say(f"  {server.name}: {count} instances in {len(bodies)} requests, {concurrency} at a time, "
                    f"{seconds:.1f} s (a request: p50 {pct(spent, 0.5):.0f} ms, p99 {pct(spent, 0.99):.0f} "
                    f"ms); all visible {after:.2f} s after the last answer")  # fmt: skip
            del bodies
        mine, theirs = (uploads[s.name] for s in bench.servers)

        def both(
            of: Callable[[Upload], float], a: list[Upload] = mine, b: list[Upload] = theirs
        ) -> tuple[float, float]:
            return statistics.median(map(of, a)), statistics.median(map(of, b))

        name = f"STOW-RS, {STOW_PER_REQUEST} instances a request, {concurrency} at a time"
        bench.add(name, "instances/s", both(lambda u: u.rate(count)), True)
        bench.add(name, "MB/s", both(Upload.mb_s), True)
        sent = f"{count} sent by STOW-RS, {concurrency} at a time"
        # ms: Orthanc's figure, a few ms, would round to 0 s.
        bench.add(f"{sent}: all visible in QIDO-RS, after the last answer", "ms",
                  both(lambda u: u.visible_after_s * 1000), False)  # fmt: skip
        seen[str(concurrency)] = {
            server: [{k: round(v, 3) for k, v in u.__dict__.items()} for u in found]
            for server, found in uploads.items()
        }
    return {"instances": count, "per_request": STOW_PER_REQUEST, "rounds": rounds, "by_concurrency": seen}


def latency_phase(pacsflow: Server, count: int) -> dict[str, Any]:
    """pacsflow, store acknowledged -> visible in QIDO-RS and in the series metadata, each
    instance alone (see tests/bench/visibility.py), by C-STORE and by STOW-RS (one instance a
    request); each protocol into a series of its own."""
    jitter = random.Random(SEED)
    pauses = [jitter.uniform(0.3, 0.7) for _ in range(count)]
    found = {}
    cstore = visibility.Target(pacsflow.dicomweb, _uid(200), _uid(200, 1))
    datasets = [_ct(cstore.study, cstore.series, n) for n in range(1, count + 1)]
    found["C-STORE"] = visibility.after_cstore(cstore, pacsflow.dicom_port, datasets, pauses)
    del datasets
    by_stow = visibility.Target(pacsflow.dicomweb, _uid(201), _uid(201, 1))
    bodies = [(f"{by_stow.series}.{n}", stow.body([dicomdata.encode(_ct(by_stow.study, by_stow.series, n))]))
              for n in range(1, count + 1)]  # fmt: skip
    found["STOW-RS"] = visibility.after_stow(by_stow, bodies, pauses)
    out: dict[str, Any] = {"instances": count, "poll_ms": visibility.POLL_S * 1000}
    for protocol, sent in found.items():
        out[protocol] = visibility.summary(sent)
        for where, label in (("qido", "in QIDO-RS"), ("metadata", "in the series metadata")):
            figures = out[protocol][where]
            say(f"  {protocol} acknowledged -> visible {label}: p50 {figures['p50']:.0f} ms, "
                f"p99 {figures['p99']:.0f} ms, max {figures['max']:.0f} ms")  # fmt: skip
    return out


def sample_memory(servers: Sequence[Server], stop: list[bool]) -> None:
    while not stop:
        for server in servers:
            rss, pss = server.memory()
            server.peak_rss, server.peak_pss = max(server.peak_rss, rss), max(server.peak_pss, pss)
        time.sleep(0.5)


PHASES = ("ingest", "metadata", "qido", "frames", "retrieve", "stow", "latency")
READS = {"metadata", "qido", "frames", "retrieve"}  # they read what ingest stored


def phases(only: str, profiles: str) -> set[str]:
    wanted = set(filter(None, only.split(","))) if only else set(PHASES)
    unknown = wanted - set(PHASES)
    if unknown:
        raise SystemExit(
            f"--only: unknown phase(s) {', '.join(sorted(unknown))}; choose from {','.join(PHASES)}"
        )
    if wanted & READS or profiles:
        wanted.add("ingest")
    return wanted


def run(args: argparse.Namespace) -> dict[str, Any]:
    wanted = phases(args.only, args.profile)
    say(f"phases: {', '.join(p for p in PHASES if p in wanted)}")
    data = (
        make_data(args.big, [int(n) for n in args.growth.split(",")], args.frames)
        if "ingest" in wanted
        else None
    )
    if (wanted & READS or args.profile) and not Path(WRK).exists():
        raise SystemExit("wrk is not installed: `make bench` installs it (Debian's wrk)")
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pacsflow-versus-", dir=ROOT / "var" / "bench"))
    servers: list[Server] = []
    stop: list[bool] = []
    result: dict[str, Any] = {"phases": [p for p in PHASES if p in wanted]}
    try:
        pacsflow, dsn = start_pacsflow(work)
        servers.append(pacsflow)
        orthanc = start_orthanc(work) if wanted - {"latency"} else None
        if orthanc:
            servers.append(orthanc)
        result["setup"] = setup(servers)
        for line in describe(result["setup"]):
            say(line)
        sampler = threading.Thread(target=sample_memory, args=(servers, stop), daemon=True)
        sampler.start()
        bench = Bench(pacsflow, orthanc, args.requests) if orthanc else None
        if bench and data:
            result |= reads(bench, data, dsn, wanted)
        if bench and "stow" in wanted:
            say(f"STOW-RS ({args.stow} instances, {STOW_PER_REQUEST} a request; each server in turn) ...")
            result["stow"] = stow_phase(bench, args.stow, args.rounds)
        if "latency" in wanted:
            say(f"pacsflow: store acknowledged -> visible ({args.latency} instances, one at a time) ...")
            result["acknowledged_to_visible_ms"] = latency_phase(pacsflow, args.latency)
        stop.append(True)
        sampler.join()
        if bench and orthanc:
            bench.add("peak memory of all the server's processes, PSS", "MB",
                      (pacsflow.peak_pss / 1e6, orthanc.peak_pss / 1e6), False)  # fmt: skip
            bench.add("peak memory of all the server's processes, sum of RSS", "MB",
                      (pacsflow.peak_rss / 1e6, orthanc.peak_rss / 1e6), False)  # fmt: skip
        for server in servers:
            say(f"  {server.name}'s processes at their peak (MB): RSS / USS (private) / PSS")
            for name, (rss, uss, pss) in sorted(server.peak_by_process.items(), key=lambda i: -i[1][0])[:10]:
                say(f"    {name}: {rss / 1e6:.0f} / {uss / 1e6:.0f} / {pss / 1e6:.0f}")
        for what in filter(None, args.profile.split(",")):
            assert data is not None  # phases() adds ingest for a profile
            profile(what, pacsflow, data)
        return result | {
            "rows": [{**r.__dict__, "ratio": round(r.ratio, 2)} for r in (bench.rows if bench else [])],
            "peak_by_process_mb": {
                server.name: {
                    k: dict(zip(("rss", "uss", "pss"), (round(v / 1e6) for v in peaks), strict=True))
                    for k, peaks in sorted(server.peak_by_process.items())
                }
                for server in servers
            },
            "data": {s.name: {"instances": s.count, "bytes": s.bytes} for s in data.every()} if data else {},
            "orthanc": {"SeriesMetadata": "Full", "StudiesMetadata": "Full", "SyncStorageArea": True,
                        "TCP_NODELAY": 1},
        }  # fmt: skip
    finally:
        stop.append(True)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def setup(servers: Sequence[Server]) -> dict[str, Any]:
    """Both servers' settings, the clients' and the machine's: printed beside the figures."""
    dcmtk = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dcmtk"], capture_output=True, text=True)
    return {
        "machine": f"{os.cpu_count()} cores, Linux {os.uname().release}, Python {sys.version.split()[0]}",
        **{server.name: server.settings for server in servers},
        "clients": {
            "storescu": f"dcmtk {dcmtk.stdout or '?'} storescu -R, one process per association, "
            "TCP_NODELAY=1",
            "http": "wrk (1 thread, 16 connections; 1 for retrieve); one request at a time: aiohttp, "
            "Accept-Encoding: identity for frames (Orthanc would gzip them), gzip for metadata",
        },
    }


def describe(found: Mapping[str, Any]) -> Iterator[str]:
    yield "settings:"
    for name, value in found.items():
        if isinstance(value, Mapping):
            yield f"  {name}:"
            for key, item in value.items():
                yield f"    {key}: {json.dumps(item) if isinstance(item, (dict, list, bool)) else item}"
        else:
            yield f"  {name}: {value}"


def reads(bench: Bench, data: DataSet, dsn: str, wanted: set[str]) -> dict[str, Any]:
    """C-STORE ingest of the data set, then the read phases in ``wanted`` on what it stored."""
    pacsflow, servers = bench.servers[0], bench.servers
    out: dict[str, Any] = {}
    say("ingest (dcmtk storescu; each server in turn) ...")
    big = data.big
    ingest(bench, list(big.files), [big], 1)
    rest = [s for s in data.every() if s is not big and s.name != "jpegls"]
    compressed = next(s for s in data.every() if s.name == "jpegls")
    for server in servers:
        send_as_stored(server, compressed.files, JPEGLSLossless)
    ingest(bench, [f for s in rest for f in s.files], rest, 4)
    indexed = asyncio.run(_indexed_latencies(dsn))
    say(
        f"  pacsflow ingest-to-visible per instance: p50 {pct(indexed, 0.5):.0f} ms, "
        f"p99 {pct(indexed, 0.99):.0f} ms ({len(indexed)} instances; Orthanc: visible when stored)"
    )
    out["pacsflow_ingest_to_visible_ms"] = {"p50": pct(indexed, 0.5), "p99": pct(indexed, 0.99)}

    if "metadata" in wanted:
        say("series metadata ...")
        for count, series in sorted(data.growth.items()):
            url = {
                s.name: f"{s.dicomweb}/studies/{series.study}/series/{series.series}/metadata"
                for s in servers
            }
            gzip = {"Accept-Encoding": "gzip"}
            first = [latencies(url[s.name], 1, gzip)[0] for s in servers]
            bench.add(f"series metadata, {count} instances: first request", "ms", (first[0], first[1]), False)
            if count == big.count:
                bench.load_metric(f"series metadata, {count} instances", lambda s, u=url: [u[s.name]], gzip)  # type: ignore[misc]
            else:
                warm = [pct(latencies(url[s.name], max(5, self_bound(count)), gzip), 0.5) for s in servers]
                bench.add(f"series metadata, {count} instances: warm p50", "ms", (warm[0], warm[1]), False)

    if "qido" in wanted:
        say("QIDO-RS study list (OHIF's query) ...")
        bench.load_metric("QIDO-RS study list", lambda s: [f"{s.dicomweb}/studies?{OHIF_STUDY_LIST}"], {})

        say("a series' instance list ...")
        # limit: all of them, as Orthanc answers (pacsflow's default page is 100).
        listed = f"studies/{big.study}/series/{big.series}/instances?limit={big.count}"
        bench.load_metric(f"QIDO-RS instance list of the {big.count}-instance series",
                          lambda s: [f"{s.dicomweb}/{listed}"], {})  # fmt: skip

    if "frames" in wanted:
        say("frames (OHIF's Accept) ...")
        instances = [
            f"studies/{big.study}/series/{big.series}/instances/{big.series}.{n}"
            for n in range(1, big.count + 1)
        ]
        frame_urls = {s.name: [f"{s.dicomweb}/{i}/frames/1" for i in instances] for s in servers}
        # identity: Orthanc would otherwise gzip each frame for the aiohttp client (wrk asks none).
        accept = {"Accept": OHIF_FRAMES, "Accept-Encoding": "identity"}
        bench.load_metric(
            "frame of a single-frame 512x512 instance", lambda s: frame_urls[s.name], accept, mb_s=True
        )
        mf = data.multiframe
        n = data.frames // 2
        frame_n = f"studies/{mf.study}/series/{mf.series}/instances/{mf.series}.1/frames/{n}"
        mf_url = {s.name: f"{s.dicomweb}/{frame_n}" for s in servers}
        spent = [pct(latencies(mf_url[s.name], 50, accept), 0.5) for s in servers]
        bench.add(f"frame {n} of a {data.frames}-frame instance: p50", "ms", (spent[0], spent[1]), False)

    if "retrieve" in wanted:
        say("whole-series retrieve ...")

        def retrieve(server: Server) -> float:
            # wrk, one connection: a Python client reading 260 MB answers would be what is measured.
            url = f"{server.dicomweb}/studies/{big.study}/series/{big.series}"
            return wrk([url], {"Accept": DICOM_ACCEPT}, seconds=4, connections=1)[1]

        bench.add(f"retrieve the {big.count}-instance series", "MB/s", bench.alternate(retrieve), True)
        started = time.perf_counter()
        subprocess.run(["cat", *map(str, pacsflow.storage.rglob(f"{big.series}/*.dcm"))],
                       stdout=subprocess.DEVNULL, check=True)  # fmt: skip
        out["cat_mb_s"] = round(big.bytes / (time.perf_counter() - started) / 1e6)
        say(f"  `cat` of the same files (page cache): {out['cat_mb_s']} MB/s")
    return out


def self_bound(count: int) -> int:
    """Requests for a warm figure: fewer for big series, whose answers take long on Orthanc."""
    return 20 if count <= 500 else 5


def _process_name(pid: int) -> str:
    argv = _cmdline(pid)
    if "pipeline" in argv:
        return f"pacsflow {' '.join(argv[argv.index('pipeline') + 1 :])}"
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return str(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


PROFILES = ("retrieve", "metadata", "qido", "frames")


def profile(what: str, pacsflow: Server, data: DataSet) -> None:
    """py-spy of pacsflow's web process while wrk loads one of ``PROFILES``; the raw samples go to
    tests/bench/results, the frames of pacsflow's own code that take the most time are printed."""
    big = data.big
    series = f"/studies/{big.study}/series/{big.series}"
    path, headers, connections = {
        "retrieve": (series, {"Accept": DICOM_ACCEPT}, 1),
        "metadata": (f"{series}/metadata", {"Accept-Encoding": "gzip"}, 16),
        "qido": (f"/studies?{OHIF_STUDY_LIST}", {}, 16),
        "frames": (f"{series}/instances/{big.series}.1/frames/1", {"Accept": OHIF_FRAMES}, 16),
    }[what]
    web = [pid for pid in pacsflow.pids() if _cmdline(pid)[-2:] == ["pipeline", "web"]]
    out = RESULTS / f"profile-{what}.txt"
    spy = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "py-spy"),
            "record",
            "-p",
            str(web[0]),
            "-d",
            "6",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wrk([f"{pacsflow.dicomweb}{path}"], headers, seconds=7, connections=connections)
    spy.wait(60)
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack.endswith("_worker (concurrent/futures/thread.py:81)"):
            continue  # an idle thread of the pool, waiting for work
        total += int(samples)
        for frame in set(stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + int(samples)
    say(f"  profile of {what} ({total} busy samples; raw in {out.relative_to(ROOT)}):")
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1])[:25]:
        say(f"    {count / max(total, 1) * 100:5.1f}%  {frame}")


def report(result: dict[str, Any]) -> Iterator[str]:
    yield "| metric | pacsflow | Orthanc | ratio (>1: pacsflow better) |"
    yield "|---|---|---|---|"
    for row in result["rows"]:
        unit = row["unit"]
        yield f"| {row['metric']} ({unit}) | {row['pacsflow']:g} | {row['orthanc']:g} | {row['ratio']:.2f} |"


QUICK = {"big": 20, "growth": "20", "frames": 10, "requests": 20, "stow": 40, "rounds": 1, "latency": 5}


def parse_args(parser: argparse.ArgumentParser, quick: Mapping[str, Any]) -> argparse.Namespace:
    """The arguments; with ``--quick``, ``quick``'s sizes wherever an argument was left at its default."""
    args = parser.parse_args()
    if args.quick:
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big", type=int, default=500, help="instances of the big CT series (512x512)")
    parser.add_argument("--growth", default="100,500,2000", help="series sizes for metadata growth")
    parser.add_argument("--frames", type=int, default=120, help="frames of the multi-frame instance")
    parser.add_argument("--requests", type=int, default=200, help="requests per one-client latency figure")
    parser.add_argument(
        "--profile",
        default="",
        help=f"at the end, profile pacsflow's web server under these loads ({','.join(PROFILES)})",
    )
    parser.add_argument(
        "--only", default="", help=f"these phases only, e.g. stow,latency ({','.join(PHASES)})"
    )
    parser.add_argument("--stow", type=int, default=500, help="instances of each STOW-RS round (512x512 CT)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="STOW-RS rounds per concurrency, servers alternating"
    )
    parser.add_argument("--latency", type=int, default=50, help="instances sent one at a time per protocol")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes to check the bench works, not figures"
    )
    args = parse_args(parser, QUICK)
    started = time.perf_counter()
    result = run(args)
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started)
    result["settings"] = {k: v for k, v in vars(args).items()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"versus-{'quick-' if args.quick else ''}{result['when'].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2))
    say("")
    if "setup" in result:
        for line in describe(result["setup"]):
            say(line)
        say("")
    if result["rows"]:
        say(f"commit {result['setup']['pacsflow']['version']}, {result['when']}")
        for line in report(result):
            say(line)
    if "pacsflow_ingest_to_visible_ms" in result:
        visible = result["pacsflow_ingest_to_visible_ms"]
        say(
            f"\npacsflow, each instance from received to visible in QIDO-RS: p50 {visible['p50']:.0f} ms, "
            f"p99 {visible['p99']:.0f} ms (Orthanc: visible when the C-STORE is answered)."
        )
    if "cat_mb_s" in result:
        say(f"`cat` reads the big series at {result['cat_mb_s']} MB/s.")
    if "acknowledged_to_visible_ms" in result:
        found = result["acknowledged_to_visible_ms"]
        say(f"\npacsflow, store acknowledged -> visible ({found['instances']} instances a protocol, one "
            f"at a time, polled every {found['poll_ms']:.0f} ms; Orthanc: visible when the store is "
            "answered):")  # fmt: skip
        say("| protocol | in QIDO-RS p50 / p99 (ms) | in the series metadata p50 / p99 (ms) |")
        say("|---|---|---|")
        for protocol in ("C-STORE", "STOW-RS"):
            cells = [
                f"{found[protocol][w]['p50']:.0f} / {found[protocol][w]['p99']:.0f}"
                for w in ("qido", "metadata")
            ]
            say(f"| {protocol} | {' | '.join(cells)} |")
    say(f"\n{result['seconds']} s; results in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
