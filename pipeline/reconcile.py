"""``pacsflow reconcile``: make the index account for every file under the storage root.

Files with no instance row get their ``storage_queue`` event again (after an embedded broker lost
its topics, say); rows whose file is gone are reported. Events go through the durable outbox, so
the run is safe at any time: re-publishing an indexed file only rewrites the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from pydicom import dcmread

from pipeline import log, topics
from pipeline.errors import PacsflowError
from pipeline.models import StorageEvent, TenantId, Uid
from pipeline.models.formats import iso_utc
from pipeline.outbox import Message, Outbox, OutboxPublisher
from pipeline.settings import Settings
from pipeline.stores import postgres
from pipeline.stores.files import TEMP_SUFFIX, InstanceLocation

_log = log.get(__name__)


@dataclass
class Report:
    files: int = 0
    indexed: int = 0
    republished: list[str] = field(default_factory=list)
    rows_without_file: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"files on disk: {self.files}; instance rows: {self.indexed}",
            f"re-published (file not indexed): {len(self.republished)}",
            f"rows whose file is gone: {len(self.rows_without_file)}",
            f"files that are not readable instances where they lie: {len(self.unreadable)}",
        ]
        out += [f"  gone: {p}" for p in self.rows_without_file[:20]]
        out += [f"  unreadable: {p}" for p in self.unreadable[:20]]
        return out


def instance_files(root: Path, tenant: str | None) -> Iterator[str]:
    """Paths (relative to ``root``) of ``<tenant>/<study>/<series>/<sop>.dcm`` files."""
    tenants = [root / tenant] if tenant else sorted(p for p in root.iterdir() if p.is_dir())
    for tenant_dir in tenants:
        for path in tenant_dir.glob("*/*/*.dcm"):
            if path.parts[-3] != "metadata" and not path.name.endswith(TEMP_SUFFIX):
                yield path.relative_to(root).as_posix()


def event_for(root: Path, relative: str, node_id: str) -> StorageEvent:
    tenant, study, series, name = relative.split("/")
    location = InstanceLocation(TenantId(tenant), Uid(study), Uid(series), Uid(name.removesuffix(".dcm")))
    path = root / relative
    ds = dcmread(path, stop_before_pixels=True)
    if str(ds.get("SOPInstanceUID", "")).strip() != location.sop:
        raise PacsflowError(f"{relative}: its SOPInstanceUID is {ds.get('SOPInstanceUID')!r}")
    stat = path.stat()
    return StorageEvent(
        TransferSyntax=str(ds.file_meta.TransferSyntaxUID),
        SopInstanceUID=location.sop,
        StudyInstanceUID=location.study,
        SeriesInstanceUID=location.series,
        PatientID=str(ds.get("PatientID", "") or ""),
        FileName=name,
        FileSize=stat.st_size,
        FilePath=relative,
        TenantID=location.tenant,
        SopClassUID=str(ds.get("SOPClassUID", "") or ""),
        SourceAE="",
        SourceIP="",
        ReceivedTime=iso_utc(datetime.fromtimestamp(stat.st_mtime, UTC)),
        TraceID=str(uuid.uuid4()),
        NodeID=node_id,
    )


async def reconcile(settings: Settings, tenant: str | None = None) -> Report:
    report = Report()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        indexed = await postgres.instance_paths(pool, [tenant] if tenant else None)
    finally:
        await pool.close()
    on_disk = set(instance_files(settings.storage_root, tenant)) if settings.storage_root.exists() else set()
    report.files, report.indexed = len(on_disk), len(indexed)
    report.rows_without_file = sorted(set(indexed) - on_disk)
    messages: list[Message] = []
    for relative in sorted(on_disk - set(indexed)):
        try:
            event = event_for(settings.storage_root, relative, settings.node_id)
        except Exception as exc:  # one bad file is reported, the others still go
            report.unreadable.append(f"{relative} ({exc})")
            continue
        messages.append(
            Message(topics.STORAGE_QUEUE, topics.study_key(event.StudyInstanceUID), event.dumps())
        )
        report.republished.append(relative)
    if messages:
        outbox = Outbox.open_slot(settings.outbox_dir, "reconcile")
        try:
            outbox.append(messages)
            await OutboxPublisher(settings, outbox).flush()
        finally:
            outbox.close(remove=outbox.pending() == 0)
    _log.info(
        "reconciled",
        files=report.files,
        indexed=report.indexed,
        republished=len(report.republished),
        rows_without_file=len(report.rows_without_file),
        unreadable=len(report.unreadable),
    )
    return report
