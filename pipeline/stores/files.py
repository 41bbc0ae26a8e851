"""The storage root's layout (the seed's, kept exactly) and durable, atomic file writes.

- instance: ``<root>/<Tenant>/<Study>/<Series>/<SOP>.dcm``
- series metadata: ``<root>/<Tenant>/metadata/<Study>/<Series>.json``
- study metadata: ``<root>/<Tenant>/metadata/<Study>.json``
- converted copy (for the viewer): ``<root>/<Tenant>/<Study>/<Series>/<SOP>.converted``

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

from pipeline.errors import StorageError, StorageFull, StorageUnavailable
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

    def converted_path(self, location: InstanceLocation) -> Path:
        return converted_copy(self.instance_path(location))

    def series_metadata_path(self, tenant: TenantId, study: Uid, series: Uid) -> Path:
        return self.root / tenant / "metadata" / study / f"{series}.json"

    def study_metadata_path(self, tenant: TenantId, study: Uid) -> Path:
        return self.root / tenant / "metadata" / f"{study}.json"


def converted_copy(instance: Path) -> Path:
    """The converted copy of an instance the viewer cannot decode: beside it, so that removing the
    instance's folder takes it too, and not ``*.dcm``, so that ``pacsflow reconcile`` never takes
    it for an instance of its own."""
    return instance.with_suffix(".converted")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
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
        fsync_dir(new.parent)


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
        make_dirs(directory)
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
        fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the original error is the one to report
            temp.unlink(missing_ok=True)
        raise _error(path, exc) from exc
    return size


def remove_instance_files(root: Path, paths: Iterable[Path]) -> None:
    """Unlink ``paths`` (files under ``<root>/<tenant>/<study>/<series>/``), make that durable, and
    drop the series' and study's folders they leave empty. A file already gone (a deletion applied
    again) is not an error; anything else the kernel refuses is ``StorageUnavailable``: the caller
    waits for the storage rather than forgetting files it could not remove."""
    folders: set[Path] = set()
    try:
        if not root.is_dir():
            raise StorageUnavailable(f"the storage root {root} is not there (not mounted?)")
        for path in paths:
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in sorted(folders, reverse=True):
            if folder.is_dir():
                fsync_dir(folder)
            for empty in (folder, folder.parent):  # the series' folder, then the study's
                try:
                    empty.rmdir()
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        break
                    raise
                fsync_dir(empty.parent)
    except OSError as exc:
        raise StorageUnavailable(f"cannot remove files under {root}: {exc.strerror or exc}") from exc


def place_atomic(temp: Path, path: Path) -> int:
    """Move ``temp`` (written elsewhere on the same filesystem) to ``path`` with ``write_atomic``'s
    guarantee, without copying its bytes: fsynced, renamed, the folder fsynced. Returns its size."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        make_dirs(path.parent)
        temp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # on another filesystem after all: copy it
            with open(temp, "rb") as fp:
                return write_atomic(path, iter(lambda: fp.read(1 << 20), b""))
        raise _error(path, exc) from exc
    return size
