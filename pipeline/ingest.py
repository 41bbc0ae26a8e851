"""Storing one received instance: check it, write it durably, spool its events.

Shared by every way an instance arrives (C-STORE now, STOW-RS later). The order is the delivery
guarantee: the file is durable before its events are spooled, and both before the caller reports
success. Nothing is written for an instance that fails a check.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import FileMetaDataset

from pipeline import log, topics
from pipeline.dicomfile import Header, encode_file_meta, read_header
from pipeline.errors import InstanceUidMismatch, MissingAttribute, SopClassMismatch
from pipeline.models import DicomObjectMeta, StorageEvent, TenantId, Uid
from pipeline.models.formats import doris_date, doris_datetime, iso_utc, uid_hash
from pipeline.outbox import Message, Outbox
from pipeline.stores.files import InstanceLocation, StorageLayout, write_atomic

_log = log.get(__name__)


@dataclass(frozen=True)
class Source:
    """Who sent an instance, and under which tenant it is stored."""

    tenant: TenantId
    ae_title: str
    address: str
    trace_id: str


@dataclass(frozen=True)
class StoredInstance:
    location: InstanceLocation
    header: Header
    transfer_syntax: str
    file_size: int
    received: datetime
    source: Source


def new_trace_id() -> str:
    return str(uuid.uuid4())


def _uid(value: str, what: str) -> Uid:
    if not value:
        raise MissingAttribute(f"{what} is missing or empty")
    return Uid(value, what)


def locate(header: Header, tenant: TenantId) -> InstanceLocation:
    """Validate the identifiers that make up the file's path."""
    return InstanceLocation(
        tenant=tenant,
        study=_uid(header.study_uid, "StudyInstanceUID"),
        series=_uid(header.series_uid, "SeriesInstanceUID"),
        sop=_uid(header.sop_instance_uid, "SOPInstanceUID"),
    )


def events_for(stored: StoredInstance, node_id: str) -> list[Message]:
    """The ``storage_queue`` and ``log_queue`` records of one stored instance (pure)."""
    loc, header, source = stored.location, stored.header, stored.source
    relative = str(loc.relative)
    storage = StorageEvent(
        TransferSyntax=stored.transfer_syntax,
        SopInstanceUID=loc.sop,
        StudyInstanceUID=loc.study,
        SeriesInstanceUID=loc.series,
        PatientID=header.patient_id,
        FileName=loc.relative.name,
        FileSize=stored.file_size,
        FilePath=relative,
        TenantID=loc.tenant,
        SopClassUID=header.sop_class_uid,
        SourceAE=source.ae_title,
        SourceIP=source.address,
        ReceivedTime=iso_utc(stored.received),
        TraceID=source.trace_id,
        NodeID=node_id,
    )
    object_meta = DicomObjectMeta(
        trace_id=source.trace_id,
        worker_node_id=node_id,
        tenant_id=loc.tenant,
        patient_id=header.patient_id,
        study_uid=loc.study,
        series_uid=loc.series,
        sop_uid=loc.sop,
        file_size=stored.file_size,
        file_path=relative,
        transfer_syntax_uid=stored.transfer_syntax,
        number_of_frames=header.number_of_frames,
        created_time=doris_datetime(stored.received),
        series_uid_hash=uid_hash(loc.series),
        study_uid_hash=uid_hash(loc.study),
        accession_number=header.accession_number,
        target_ts=None,
        study_date=doris_date(header.study_date),
        transfer_status="stored",
        source_ip=source.address,
        source_ae=source.ae_title,
    )
    key = topics.study_key(loc.study)
    return [
        Message(topics.STORAGE_QUEUE, key, storage.dumps()),
        Message(topics.LOG_QUEUE, key, object_meta.dumps()),
    ]


class InstanceReceiver:
    """Stores received instances under the storage root and spools their events."""

    def __init__(self, layout: StorageLayout, outbox: Outbox, node_id: str) -> None:
        self._layout = layout
        self._outbox = outbox
        self._node_id = node_id

    def receive(self, file_meta: FileMetaDataset, dataset: bytes, source: Source) -> StoredInstance:
        """Store one instance; raise a ``RejectedInstance`` or ``StorageError`` if it is not stored.

        ``file_meta`` carries the transfer syntax and the SOP class and instance the sender
        announced; ``dataset`` is the dataset exactly as received, which is what is stored.
        """
        started = time.perf_counter()
        syntax = str(file_meta.TransferSyntaxUID)
        header = read_header(dataset, syntax)
        location = locate(header, source.tenant)
        sop_class = _uid(header.sop_class_uid, "SOPClassUID")
        announced_class = str(file_meta.get("MediaStorageSOPClassUID", "") or "")
        if announced_class and announced_class != sop_class:
            raise SopClassMismatch(f"SOP Class UID {sop_class} differs from the negotiated {announced_class}")
        announced_sop = str(file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        if announced_sop and announced_sop != location.sop:
            raise InstanceUidMismatch(
                f"SOP Instance UID {location.sop} differs from the request's {announced_sop}"
            )
        path = self._layout.instance_path(location)
        size = write_atomic(path, (encode_file_meta(file_meta), dataset))
        stored = StoredInstance(location, header, syntax, size, datetime.now(UTC), source)
        self._outbox.append(events_for(stored, self._node_id))
        _log.info(
            "instance_stored",
            study_uid=location.study,
            series_uid=location.series,
            bytes=size,
            transfer_syntax=syntax,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return stored
