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
import functools
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.errors import StorageError, StorageFull, StorageUnavailable
from pipeline.models import TenantId, Uid

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class InstanceLocation:
    tenant: TenantId
    study: Uid
    series: Uid
    sop: Uid

    @functools.cached_property
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


def fsync_dir(path: Path | str) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Folder:
    changed: threading.Condition
    started: int = 0
    """fsyncs of the folder begun"""
    done: int = 0
    """the last fsync that ended (they run one at a time)"""
    synced: int = 0
    """the last fsync that succeeded"""
    error: OSError | None = None
    running: bool = False
    users: int = 0
    waiting: list[int] = field(default_factory=list)


class FolderSyncs:
    """Folder fsyncs shared by the files renamed into one folder at the same time.

    A rename is durable once an fsync of its folder that *began after it* has ended (an fsync
    already under way may have read the folder before the rename). So a writer takes as its turn
    the next fsync to begin, and returns when that one ended: run by itself if none is under way,
    else by whichever writer is first to find the running one ended; every writer that arrived
    meanwhile shares it. Each writer still returns only once its own rename is durable, or raises
    the error of the fsync it waited for.
    """

    def __init__(self, fsync: Callable[[Path], None] | None = None) -> None:
        self._fsync = fsync or fsync_dir
        self._lock = threading.Lock()
        self._folders: dict[str, _Folder] = {}

    def sync(self, folder: Path | str) -> None:
        """Make the entries ``folder`` has now (a rename just done) durable."""
        key = os.fspath(folder)
        with self._lock:
            state = self._folders.get(key)
            if state is None:
                state = self._folders[key] = _Folder(threading.Condition(self._lock))
            state.users += 1
            turn = state.started + 1
            state.waiting.append(turn)
            try:
                while state.done < turn:
                    if state.running:
                        state.changed.wait()
                    else:
                        self._run(folder, state)
            finally:
                state.waiting.remove(turn)
                state.users -= 1
                if not state.users:
                    del self._folders[key]
            if state.synced < turn:
                assert state.error is not None
                raise state.error

    def _run(self, folder: Path | str, state: _Folder) -> None:
        """One fsync, the lock released while it runs."""
        state.started += 1
        number, state.running = state.started, True
        error: OSError | None = None
        self._lock.release()
        try:
            self._fsync(Path(folder))
        except OSError as exc:
            error = exc
        finally:
            self._lock.acquire()
            state.running, state.done = False, number
            if error is None:
                state.synced = number
            else:
                state.error = error
            state.changed.notify_all()

    def waiting(self, folder: Path) -> int:
        """How many writers wait for an fsync of ``folder`` now (for tests)."""
        with self._lock:
            state = self._folders.get(os.fspath(folder))
            return len(state.waiting) if state is not None else 0


_FOLDER_SYNCS = FolderSyncs()


def make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each made durable in its own parent."""
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for new in reversed(missing):
        # Another association may create it at the same moment: its entry is durable once the
        # parent has been synced after that, whoever made it.
        with contextlib.suppress(FileExistsError):
            new.mkdir()
        _FOLDER_SYNCS.sync(new.parent)


def _error(path: Path, exc: OSError) -> StorageError:
    if exc.errno in _NO_SPACE:
        return StorageFull(f"no space left to write {path}: free space on the storage root")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


def write_atomic(path: Path, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` so that a reader sees the old file or the whole new one.

    The bytes go to a temporary name in the same folder, are fsynced, renamed over ``path`` and
    the folder is fsynced (an fsync shared with the other files renamed into it meanwhile:
    ``FolderSyncs``): when this returns, the file survives a crash. On failure nothing new is
    left behind and an existing file at ``path`` is untouched. Returns the size written.
    """
    # Strings, not Paths, on the way of every instance: pathlib costs more than the syscalls.
    directory, name = os.path.split(os.fspath(path))
    temp = f"{directory}/.{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    size = 0
    try:
        try:  # the folder is there for all but an instance's series' first
            fd = os.open(temp, _NEW_FILE, 0o644)
        except FileNotFoundError:
            make_dirs(Path(directory))
            fd = os.open(temp, _NEW_FILE, 0o644)
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
        os.replace(temp, path)  # noqa: PTH105 - strings, as above
        _FOLDER_SYNCS.sync(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the original error is the one to report
            os.unlink(temp)  # noqa: PTH108 - strings, as above
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
        _FOLDER_SYNCS.sync(path.parent)
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # on another filesystem after all: copy it
            with open(temp, "rb") as fp:
                return write_atomic(path, iter(lambda: fp.read(1 << 20), b""))
        raise _error(path, exc) from exc
    return size
