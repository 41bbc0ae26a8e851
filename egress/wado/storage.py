"""Reading instances' files for WADO-RS: an ``OSError`` becomes what happened to the storage.

The index says an instance exists; its file may still be gone (removed by hand, a restore that
missed it): a 404 naming the instance and ``pacsflow reconcile``, logged as an inconsistency. Or
the storage cannot be read (an I/O error, a stale mount, a storage root that is not there): a 503.
Neither is the index database's outage, which is what the error middleware takes an ``OSError``
that reaches it for; so every read of a stored file goes through ``StoredFiles.reading``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from egress.wado.errors import NotFound
from pipeline import log
from pipeline.errors import PacsflowError, StorageUnavailable
from pipeline.stores.files import converted_copy
from pipeline.stores.instances import StoredInstance

_log = log.get(__name__)


class StoredFileMissing(NotFound):
    """An indexed instance whose file is not under the storage root."""


class ConvertedCopyMissing(StoredFileMissing):
    """An instance whose index row says it has a converted copy that is not there: its reader
    falls back to the stored file."""


@dataclass(frozen=True)
class StoredFiles:
    """One tenant's instance files under the storage root."""

    root: Path
    tenant: str

    def path(self, instance: StoredInstance, converted: bool = False) -> Path:
        """The instance's file, or (``converted``) its converted copy."""
        path = self.root / instance.file_path
        return converted_copy(path) if converted else path

    @contextmanager
    def reading(self, instance: StoredInstance, converted: bool = False) -> Iterator[Path]:
        """The path of the instance's file (or converted copy); an ``OSError`` raised while it is
        read becomes what it means."""
        try:
            yield self.path(instance, converted)
        except OSError as exc:
            raise self._failure(instance, exc, converted) from exc

    def open_all(
        self, instances: Sequence[StoredInstance], converted: Sequence[bool] | None = None
    ) -> list[BinaryIO]:
        """Every instance's file (or, where ``converted`` says so, its converted copy), opened; all
        or none (blocking: call it in a thread).

        A multipart answer opens its files before its first byte: once the status line is out, a
        missing file can no longer be told as a 404. An open file stays readable if it is removed.
        """
        with ExitStack() as opened:
            files: list[BinaryIO] = []
            copies = [False] * len(instances) if converted is None else converted
            for instance, copy in zip(instances, copies, strict=True):
                with self.reading(instance, copy) as path:
                    files.append(opened.enter_context(path.open("rb")))
            opened.pop_all()
        return files

    def _failure(self, instance: StoredInstance, exc: OSError, converted: bool = False) -> PacsflowError:
        where = f"instance {instance.sop_uid} of series {instance.series_uid} in study {instance.study_uid}"
        if converted and exc.errno == errno.ENOENT and self.root.is_dir():
            _log.warning(
                "converted_copy_missing",
                tenant=self.tenant,
                study=instance.study_uid,
                series=instance.series_uid,
                sop=instance.sop_uid,
                path=str(self.path(instance, converted=True)),
            )
            return ConvertedCopyMissing(f"the converted copy of {where} is not in the storage")
        if exc.errno == errno.ENOENT and self.root.is_dir():
            _log.warning(
                "stored_file_missing",
                tenant=self.tenant,
                study=instance.study_uid,
                series=instance.series_uid,
                sop=instance.sop_uid,
                path=instance.file_path,
                fix="pacsflow reconcile",
            )
            return StoredFileMissing(
                f"{where} is in the index, but its file {instance.file_path} is not in the storage; "
                "`pacsflow reconcile` lists every such instance (restore the file or send the instance again)"
            )
        return unreadable(self.root, f"{where}, file {instance.file_path}", exc)


def unreadable(root: Path, what: str, exc: OSError) -> StorageUnavailable:
    """The 503 for ``exc``, raised reading ``what`` under ``root``; logged."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        # Not the storage's fault: each retrieve holds its files open until it is sent.
        _log.warning("out_of_file_descriptors", what=what, error=reason)
        return StorageUnavailable(
            f"pacsflow web has no file descriptors left ({reason}) reading {what}: too many answers "
            "in flight; try again shortly, or raise its open-file limit (ulimit -n)"
        )
    if not root.is_dir():
        reason = f"the storage root {root} is not there ({reason}): is its volume mounted here?"
    _log.warning("storage_unreadable", what=what, error=reason, errno=exc.errno)
    return StorageUnavailable(f"the storage is not readable: {what}: {reason}; try again when it is back")
