"""Storing one received instance: check it, write it durably, spool its events.

Shared by every way an instance arrives: a C-STORE's dataset in memory (``receive_announced``, or
``receive`` with a pydicom File Meta Information), a STOW-RS part already streamed to a temporary
file on the storage root's filesystem (``receive_file``).
Both go through one core with one set of checks. The order is the delivery guarantee: the file is
durable before its events are spooled, and both before the caller reports success. Nothing is
written for an instance that fails a check.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

from pipeline import log, topics
from pipeline.dicomfile import (
    Header,
    copy_dataset,
    encode_announced_meta,
    encode_file_meta,
    read_header,
    read_part10,
)
from pipeline.errors import (
    InstanceUidMismatch,
    InvalidIdentifier,
    MissingAttribute,
    PacsflowError,
    SopClassMismatch,
    StorageFull,
    StudyMismatch,
    UnreadableDataset,
)
from pipeline.models import DicomObjectMeta, StorageEvent, TenantId, Uid
from pipeline.models.formats import doris_date, doris_datetime_ms, iso_utc, uid_hash
from pipeline.outbox import Message, Outbox
from pipeline.stores.files import (
    InstanceLocation,
    StorageLayout,
    place_atomic,
    write_atomic,
)

_log = log.get(__name__)

# The instances of a series come one after another: their series' and study's values are computed once.
_uid_hash = functools.lru_cache(maxsize=1024)(uid_hash)
_doris_date = functools.lru_cache(maxsize=1024)(doris_date)


class StoreStatus(IntEnum):
    """The status of a store (PS3.4 Annex B.2.3): a C-STORE's Status, a STOW-RS FailureReason."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # 0xC000-0xCFFF is "Cannot understand"; the low bits are ours, the ErrorComment says which.
    CANNOT_UNDERSTAND = 0xC000
    MISSING_ATTRIBUTE = 0xC001
    INVALID_IDENTIFIER = 0xC002
    INSTANCE_UID_MISMATCH = 0xC003
    STUDY_MISMATCH = 0xC122  # STOW-RS to /studies/{study} of an instance of another study


_FAILURES: tuple[tuple[type[PacsflowError], StoreStatus], ...] = (
    (StorageFull, StoreStatus.OUT_OF_RESOURCES),
    (SopClassMismatch, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (UnreadableDataset, StoreStatus.CANNOT_UNDERSTAND),
    (MissingAttribute, StoreStatus.MISSING_ATTRIBUTE),
    (InvalidIdentifier, StoreStatus.INVALID_IDENTIFIER),
    (InstanceUidMismatch, StoreStatus.INSTANCE_UID_MISMATCH),
    (StudyMismatch, StoreStatus.STUDY_MISMATCH),
)


def status_for(error: PacsflowError) -> StoreStatus:
    """The failure status of an instance that was not stored: one mapping for every way in."""
    for kind, status in _FAILURES:
        if isinstance(error, kind):
            return status
    return StoreStatus.PROCESSING_FAILURE


@dataclass(frozen=True)
class Source:
    """Who sent an instance, and under which tenant it is stored."""

    tenant: TenantId
    ae_title: str
    address: str
    trace_id: str


@dataclass(frozen=True)
class Announced:
    """What a C-STORE request says of its dataset, before it is read: the SOP class and instance of
    its command, the presentation context's transfer syntax; with the implementation that writes
    the File Meta Information the stored file gets."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    implementation_class: str
    implementation_version: str


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
        created_time=doris_datetime_ms(stored.received),
        series_uid_hash=_uid_hash(loc.series),
        study_uid_hash=_uid_hash(loc.study),
        accession_number=header.accession_number,
        target_ts=None,
        study_date=_doris_date(header.study_date),
        transfer_status="stored",
        source_ip=source.address,
        source_ae=source.ae_title,
    )
    key = topics.study_key(loc.study)
    return [
        Message(topics.STORAGE_QUEUE, key, storage.dumps()),
        Message(topics.LOG_QUEUE, key, object_meta.dumps()),
    ]


# Who announced the SOP class and instance a dataset must match, for the refusals' wording.
_BY_C_STORE = ("the negotiated", "the request's")
_BY_FILE_META = ("the file meta's", "the file meta's")

Writer = Callable[[Path], int]
"""Writes an instance's file durably at the given path; returns its size."""


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
        meta = encode_file_meta(file_meta)
        return self._store(
            header,
            _announced_by_meta(file_meta),
            _BY_C_STORE,
            source,
            lambda path: write_atomic(path, (meta, dataset)),
            started,
        )

    def receive_announced(self, announced: Announced, dataset: bytes, source: Source) -> StoredInstance:
        """``receive`` for a C-STORE request as the SCP has it: what it announced, no pydicom
        dataset of File Meta Information built for it."""
        started = time.perf_counter()
        header = read_header(dataset, announced.transfer_syntax)

        def write(path: Path) -> int:
            meta = encode_announced_meta(
                announced.sop_class,
                announced.sop_instance,
                announced.transfer_syntax,
                announced.implementation_class,
                announced.implementation_version,
            )
            return write_atomic(path, (meta, dataset))

        checked = (announced.transfer_syntax, announced.sop_class, announced.sop_instance)
        return self._store(header, checked, _BY_C_STORE, source, write, started)

    def receive_file(self, temp: Path, source: Source, expected_study: Uid | None = None) -> StoredInstance:
        """Store the Part 10 file at ``temp`` (on the storage root's filesystem); raise as ``receive``.

        The file is renamed into place as it is when its File Meta Information is sound; else the
        meta is re-encoded (the missing elements filled from the dataset) and the dataset copied
        after it. Either way the dataset's bytes are stored as they came. ``expected_study``: the
        study a STOW-RS ``/studies/{study}`` stores into; an instance of another is refused.
        On success ``temp`` is gone; on failure it is left for the caller to remove.
        """
        started = time.perf_counter()
        with open(temp, "rb") as fp:
            part = read_part10(fp)
            syntax = str(part.meta.TransferSyntaxUID)
            header = read_header(fp, syntax)
        meta = part.meta if part.sound else _completed(part.meta, header)

        def write(path: Path) -> int:
            if part.sound:
                return place_atomic(temp, path)
            with open(temp, "rb") as fp:
                chunks = itertools.chain((encode_file_meta(meta),), copy_dataset(fp, part.dataset_offset))
                size = write_atomic(path, chunks)
            with contextlib.suppress(OSError):
                temp.unlink()
            return size

        return self._store(
            header, _announced_by_meta(meta), _BY_FILE_META, source, write, started, expected_study
        )

    def _store(
        self,
        header: Header,
        announced: tuple[str, str, str],
        announced_by: tuple[str, str],
        source: Source,
        write: Writer,
        started: float,
        expected_study: Uid | None = None,
    ) -> StoredInstance:
        """The checks and the durable write every received instance goes through. ``announced``:
        the transfer syntax, and the SOP class and instance the sender announced (empty: none)."""
        syntax, announced_class, announced_sop = announced
        location = locate(header, source.tenant)
        if expected_study is not None and location.study != expected_study:
            raise StudyMismatch(
                f"StudyInstanceUID {location.study} is not the study {expected_study} of the "
                f"request; post it to /studies/{location.study} or /studies"
            )
        sop_class = _uid(header.sop_class_uid, "SOPClassUID")
        if announced_class and announced_class != sop_class:
            raise SopClassMismatch(
                f"SOP Class UID {sop_class} differs from {announced_by[0]} {announced_class}"
            )
        if announced_sop and announced_sop != location.sop:
            raise InstanceUidMismatch(
                f"SOP Instance UID {location.sop} differs from {announced_by[1]} {announced_sop}"
            )
        size = write(self._layout.instance_path(location))
        stored = StoredInstance(location, header, syntax, size, datetime.now(UTC), source)
        self._outbox.append(events_for(stored, self._node_id))
        _log.info(
            "instance_stored",
            sop_instance_uid=location.sop,
            study_uid=location.study,
            series_uid=location.series,
            bytes=size,
            transfer_syntax=syntax,
            source_ae=source.ae_title,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return stored


def _announced_by_meta(meta: FileMetaDataset) -> tuple[str, str, str]:
    return (
        str(meta.TransferSyntaxUID),
        str(meta.get("MediaStorageSOPClassUID", "") or ""),
        str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
    )


def _completed(meta: FileMetaDataset, header: Header) -> FileMetaDataset:
    """A posted file's meta with what PS3.10 requires and it lacks taken from its dataset
    (``encode_file_meta`` adds the version, the implementation class and the group length)."""
    completed = FileMetaDataset()
    for element in meta:
        if element.tag != 0x00020000:  # the group length is recomputed
            completed.add(element)
    if not completed.get("MediaStorageSOPClassUID"):
        completed.MediaStorageSOPClassUID = UID(header.sop_class_uid)
    if not completed.get("MediaStorageSOPInstanceUID"):
        completed.MediaStorageSOPInstanceUID = UID(header.sop_instance_uid)
    return completed
