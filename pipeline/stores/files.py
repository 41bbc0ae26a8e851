"""The storage root's layout (the seed's, kept exactly) and durable, atomic file writes.

- instance: ``<root>/<Tenant>/<Study>/<Series>/<SOP>.dcm``
- series metadata: ``<root>/<Tenant>/metadata/<Study>/<Series>.json``
- study metadata: ``<root>/<Tenant>/metadata/<Study>.json``

Only validated identifiers (``TenantId``, ``Uid``) are joined into a path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import StorageError, StorageFull
from pipeline.models import TenantId, Uid

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class InstanceLocation:
    tenant: TenantId
    study: Uid
    series: Uid
    sop: Uid

    @property
    def relative(self) -> PurePosixPath:
        """The path under the storage root, as events carry it."""
        return PurePosixPath(self.tenant, self.study, self.series, f"{self.sop}.dcm")


@dataclass(frozen=True)
class StorageLayout:
    root: Path

    def instance_path(self, location: InstanceLocation) -> Path:
        return self.root.joinpath(*location.relative.parts)

    def series_metadata_path(self, tenant: TenantId, study: Uid, series: Uid) -> Path:
        return self.root / tenant / "metadata" / study / f"{series}.json"

    def study_metadata_path(self, tenant: TenantId, study: Uid) -> Path:
        return self.root / tenant / "metadata" / f"{study}.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each made durable in its own parent."""
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue  # another association created it at the same moment
        _fsync_dir(new.parent)


def _error(path: Path, exc: OSError) -> StorageError:
    if exc.errno in _NO_SPACE:
        return StorageFull(f"no space left to write {path}: free space on the storage root")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


def write_atomic(path: Path, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` so that a reader sees the old file or the whole new one.

    The bytes go to a temporary name in the same folder, are fsynced, renamed over ``path`` and
    the folder is fsynced: when this returns, the file survives a crash. On failure nothing new
    is left behind and an existing file at ``path`` is untouched. Returns the size written.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    size = 0
    try:
        _make_dirs(directory)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    size += written
            os.fsync(fd)
        finally:
            os.close(fd)
        temp.replace(path)
        _fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the original error is the one to report
            temp.unlink(missing_ok=True)
        raise _error(path, exc) from exc
    return size
