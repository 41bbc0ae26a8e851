"""`pacsflow import`: each file through the C-STORE's ``InstanceReceiver``, several at a time.

Each file is copied to a temporary file on the storage root's filesystem and handed to
``receive_file``, the entry STOW-RS uses: the file keeps its own File Meta Information (renamed
into place as it is when sound), and goes through every check a C-STORE's dataset does; it is
durable, and its events spooled, when that returns. The events go to an outbox slot of the import's
own (``import-<n>``), published to Kafka while the import runs and drained at its end; what the
broker has not taken by then stays in the slot, which the SCP's or web server's publisher adopts
(or the next import, which takes the same slot). Threads, not processes: the time goes to reading,
copying and fsync, which release the GIL, as the SCP's associations do.

A first SIGINT or SIGTERM stops taking files; those under way finish, the summary is printed and
the status is 130 (143 for SIGTERM). A second one ends the process at once, which the journal
allows for (see ``journal``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import logging
import os
import shutil
import signal
import sys
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ingress.importer import progress, sources
from ingress.importer.journal import Journal, journal_path
from ingress.importer.sources import Item
from pipeline import lifecycle, log
from pipeline.errors import InvalidIdentifier, PacsflowError, RejectedInstance, StorageError, StorageFull
from pipeline.ingest import InstanceReceiver, Source, new_trace_id
from pipeline.models import TenantId
from pipeline.outbox import Outbox, OutboxPublisher, held
from pipeline.settings import Settings
from pipeline.stores.files import TEMP_SUFFIX, StorageLayout

_log = log.get(__name__)
AE_TITLE = "IMPORT"
"""The ``SourceAE`` of imported instances (events, Doris rows)."""
INCOMING = ".import"
"""Folder of the storage root where files are copied before they are stored (no tenant has a dot)."""
NOT_DICOM = "not a DICOM file"
DRAIN_S = 30.0
"""How long the end of an import waits for the broker to take the events still spooled."""
_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Options:
    paths: list[Path]
    tenant: TenantId
    jobs: int
    failures: Path
    log_every: float


@dataclass
class Summary:
    seen: int
    skipped: int
    counters: progress.Counters
    not_done: int
    failures: Path
    stopped_by: int | None
    fatal: str | None
    pending_events: int
    outbox: Path
    broker: bool

    @property
    def status(self) -> int:
        if self.stopped_by is not None:
            return _STATUS[signal.Signals(self.stopped_by)]
        c = self.counters
        return 1 if self.fatal or c.failed or c.non_dicom else 0

    def lines(self) -> list[str]:
        c = self.counters
        files, megabytes = c.rates()
        elapsed = max(c.elapsed, 1e-9)
        head = "import finished"
        if self.stopped_by is not None:
            head = f"import stopped by {signal.Signals(self.stopped_by).name}: run it again to go on"
        elif self.fatal:
            head = f"import stopped: {self.fatal}"
        lines = [
            head,
            f"  files seen       {self.seen}",
            f"  stored           {c.stored}",
            f"  already stored   {self.skipped} (skipped)",
            f"  failed           {c.failed}",
            f"  not DICOM        {c.non_dicom}",
        ]
        if self.not_done:
            lines.append(f"  not done         {self.not_done}")
        lines += [
            f"  bytes            {c.bytes / progress.MB:.1f} MB",
            f"  rate             {c.stored / elapsed:.1f} instances/s, {megabytes:.2f} MB/s "
            f"({files:.1f} files/s)",
            f"  elapsed          {elapsed:.1f} s",
        ]
        if c.failed or c.non_dicom:
            lines.append(f"  failures listed in {self.failures}")
        if self.pending_events and not self.broker:
            lines.append(
                f"  events: {self.pending_events} wait in {self.outbox} (PACSFLOW_KAFKA_BOOTSTRAP is "
                "empty); a pacsflow scp or web with a broker publishes them (it adopts outboxes no "
                "process holds), as does the next import"
            )
        elif self.pending_events:
            lines.append(
                f"  events: the broker did not take {self.pending_events}; they wait, durable, in "
                f"{self.outbox}: a running pacsflow scp or web publishes them once the broker answers "
                "(it adopts outboxes no process holds, every 30 s), as does the next import"
            )
        else:
            lines.append("  events: all published to Kafka")
        return lines


class _Importer:
    """The files to do, shared by the worker threads; each one stored, refused or listed."""

    def __init__(
        self,
        items: list[Item],
        receiver: InstanceReceiver,
        journal: Journal,
        counters: progress.Counters,
        incoming: Path,
        tenant: TenantId,
        failures: Failures,
        notify: list[OutboxPublisher],
    ) -> None:
        self._items: Iterator[Item] = iter(items)
        self._receiver = receiver
        self._journal = journal
        self._counters = counters
        self._incoming = incoming
        self._tenant = tenant
        self._failures = failures
        self._notify = notify
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self._quiet = not sys.stdout.isatty()

    def work(self) -> None:
        """One thread's loop: take the next file until there is none, or the import stops."""
        while not self.stopping.is_set():
            with self._lock:
                item = next(self._items, None)
            if item is None:
                return
            self._one(item)

    def _one(self, item: Item) -> None:
        temp = self._incoming / f"{new_trace_id()}{TEMP_SUFFIX}"
        try:
            try:
                if not self._copy(item, temp):
                    self._counters.add(non_dicom=1)
                    self._failed(item, NOT_DICOM)
                    return
            except StorageError as exc:  # the storage root's: every file after would fail too
                self._stop(item, str(exc))
                return
            except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                # The source's: unreadable, or a zip member damaged or encrypted.
                self._counters.add(failed=1)
                self._failed(item, f"cannot read: {exc}")
                return
            source = Source(tenant=self._tenant, ae_title=AE_TITLE, address="", trace_id=new_trace_id())
            try:
                stored = self._receiver.receive_file(temp, source)
            except (RejectedInstance, InvalidIdentifier) as exc:
                self._counters.add(failed=1)
                self._failed(item, str(exc))
                return
            except PacsflowError as exc:  # the storage or the outbox: every file after would fail too
                self._stop(item, str(exc))
                return
            except Exception as exc:  # never count as stored what we did not foresee
                _log.exception("import_file_failed", path=item.name)
                self._counters.add(failed=1)
                self._failed(item, f"processing failure: {exc}")
                return
            for publisher in self._notify:
                publisher.notify()
            self._journal.add(item, stored.location.sop)
            self._counters.add(stored=1, size=stored.file_size)
        finally:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)

    def _stop(self, item: Item, reason: str) -> None:
        self._counters.add(failed=1)
        self._failed(item, reason)
        self.fatal = reason
        self.stopping.set()

    @staticmethod
    def _copy(item: Item, temp: Path) -> bool:
        """Copy ``item`` to ``temp``; False (nothing copied) when it is no DICOM file. Raises
        ``StorageError`` when ``temp`` cannot be written, what reading raises otherwise."""
        with item.open() as source:
            chunk = source.read(sources.HEAD)
            if not sources.looks_like_dicom(chunk):
                return False
            try:
                out = temp.open("xb")
            except OSError as exc:
                raise _written(temp, exc) from exc
            with out:
                while chunk:
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise _written(temp, exc) from exc
                    chunk = source.read(_CHUNK)
        return True

    def _failed(self, item: Item, reason: str) -> None:
        line = self._failures.add(item.name, reason)
        if self._quiet:  # on a terminal the bar counts them; the file lists them
            _log.warning("import_failed", path=item.name, reason=line)


class Failures:
    """The failures file: tab-separated ``path`` and ``reason``, a header line first. A reason is
    made one line; a path holding a tab, a newline or a quote is quoted as CSV quotes (RFC 4180),
    which spreadsheet and ``csv`` readers undo."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._rows = csv.writer(out, delimiter="\t", lineterminator="\n")
        self._lock = threading.Lock()
        self._rows.writerow(["path", "reason"])

    def add(self, name: str, reason: str) -> str:
        line = " ".join(reason.split())
        with self._lock:
            self._rows.writerow([name, line])
            self._out.flush()
        return line


def _sweep(settings: Settings, incoming: Path) -> None:
    """Empty ``incoming`` (ours: its slot is held) and remove the folders of slots no import holds:
    the copies a killed run left, whose slot another process may have adopted and drained since."""
    # A folder is removed while its slot is held here, so no import starting meanwhile can take it.
    for folder in incoming.parent.glob("*") if incoming.parent.is_dir() else ():
        if folder == incoming or not folder.is_dir():
            continue
        with held(settings.outbox_dir / f"{folder.name}.sqlite") as ours:
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True, exist_ok=True)


def _written(temp: Path, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left to write {temp}: free space on the storage root")
    return StorageError(f"cannot write {temp}: {exc.strerror or exc}")


def run_import(settings: Settings, options: Options) -> int:
    """Import ``options.paths``; print the summary; return the exit status."""
    # Each instance's own line would be a million lines for a million files: progress says it.
    if settings.log_level != "debug":
        logging.getLogger("pipeline.ingest").setLevel(logging.WARNING)
    outcome: list[Summary] = []

    async def main() -> None:
        outcome.append(await _import(settings, options))

    lifecycle.run(main())
    summary = outcome[0]
    print("\n".join(summary.lines()), flush=True)
    if sys.stdout.isatty():  # the summary just printed says it all
        return summary.status
    c = summary.counters
    _log.info(
        "import_finished",
        seen=summary.seen,
        stored=c.stored,
        skipped=summary.skipped,
        failed=c.failed,
        non_dicom=c.non_dicom,
        not_done=summary.not_done,
        bytes=c.bytes,
        seconds=round(c.elapsed, 2),
        pending_events=summary.pending_events,
        status=summary.status,
    )
    return summary.status


async def _import(settings: Settings, options: Options) -> Summary:
    loop = asyncio.get_running_loop()
    signalled: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int) -> None:
        if signalled:
            print("pacsflow import: stopped at once", file=sys.stderr, flush=True)
            os._exit(_STATUS[signal.Signals(signum)])
        signalled.append(signum)
        stop.set()
        print(
            "pacsflow import: stopping after the files under way (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    for signum in _STATUS:
        loop.add_signal_handler(signum, on_signal, signum)

    found = await asyncio.to_thread(sources.listing, options.paths, [options.failures])
    try:
        return await _store(settings, options, found, stop, signalled)
    finally:
        found.close()


async def _store(
    settings: Settings,
    options: Options,
    found: sources.Listing,
    stop: threading.Event,
    signalled: list[int],
) -> Summary:
    journal = Journal(journal_path(settings.outbox_dir), settings.storage_root, options.tenant)
    try:
        to_do = await asyncio.to_thread(lambda: [i for i in found.items if not journal.has(i)])
        skipped = len(found.items) - len(to_do)
        outbox = await asyncio.to_thread(Outbox.open_slot, settings.outbox_dir, "import")
        try:
            return await _with_outbox(
                settings, options, found, to_do, skipped, journal, outbox, stop, signalled
            )
        finally:
            outbox.close(remove=outbox.pending() == 0)
    finally:
        journal.close()


async def _with_outbox(
    settings: Settings,
    options: Options,
    found: sources.Listing,
    to_do: list[Item],
    skipped: int,
    journal: Journal,
    outbox: Outbox,
    stop: threading.Event,
    signalled: list[int],
) -> Summary:
    incoming = settings.storage_root / INCOMING / outbox.path.stem
    await asyncio.to_thread(_sweep, settings, incoming)
    publisher = OutboxPublisher(settings, outbox) if settings.kafka_bootstrap else None
    publishing = asyncio.create_task(publisher.run(), name="outbox-publisher") if publisher else None
    counters = progress.Counters(total=len(to_do))
    _log.info(
        "import_started",
        paths=[str(p) for p in options.paths],
        files=len(found.items),
        to_do=len(to_do),
        skipped=skipped,
        jobs=options.jobs,
        tenant=options.tenant,
        outbox=str(outbox.path),
        pending_events=outbox.pending(),
    )
    options.failures.parent.mkdir(parents=True, exist_ok=True)
    with options.failures.open("w", encoding="utf-8", newline="") as out:
        failures = Failures(out)
        importer = _Importer(
            to_do,
            InstanceReceiver(StorageLayout(settings.storage_root), outbox, settings.node_id),
            journal,
            counters,
            incoming,
            options.tenant,
            failures,
            [publisher] if publisher else [],
        )
        for problem in found.problems:
            failures.add(problem.name, problem.reason)
            counters.add(failed=1)
        counters.total += len(found.problems)
        with progress.display(counters.total, options.log_every) as shown:
            pool = ThreadPoolExecutor(options.jobs, thread_name_prefix="import")
            loop = asyncio.get_running_loop()
            workers = asyncio.gather(
                *(loop.run_in_executor(pool, importer.work) for _ in range(options.jobs))
            )
            try:
                while not workers.done():
                    if stop.is_set():
                        importer.stopping.set()
                    shown.show(counters)
                    await asyncio.wait([workers], timeout=0.2)
                shown.show(counters)
            finally:
                importer.stopping.set()
                pool.shutdown(wait=True)
            await workers
    shutil.rmtree(incoming, ignore_errors=True)
    if publisher is not None and publishing is not None:
        await publisher.stop(drain_timeout_s=DRAIN_S)
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        if outbox.pending():  # its producer was not connected yet, or the broker is away: retry a while
            with contextlib.suppress(TimeoutError):
                await publisher.flush(DRAIN_S)
    return Summary(
        seen=len(found.items) + len(found.problems),
        skipped=skipped,
        counters=counters,
        not_done=counters.total - counters.done,
        failures=options.failures,
        stopped_by=signalled[0] if signalled else None,
        fatal=importer.fatal,
        pending_events=outbox.pending(),
        outbox=outbox.path,
        broker=publisher is not None,
    )
