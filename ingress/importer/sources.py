"""What the paths given to `pacsflow import` hold: one ``Item`` per file to store.

A folder is walked recursively (sorted, so that runs list alike); a zip file, given or found in a
folder, yields its members; a DICOMDIR given as a path yields the files its records reference
(their Referenced File IDs, relative to the DICOMDIR's folder). A DICOMDIR met in a folder or a
zip is passed over: the files it references are in that folder or zip, and are imported as such.
Files to leave out (the run's own failures file, when it is written inside a folder imported) are
named to ``listing``.

Zip files are opened to be listed, then closed: a member is read through ``Archives``, which keeps
only the few most recently read open, so that a disk of thousands of zips does not hold a descriptor
for each (the process's limit is often 1,024).
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import IO

from pydicom import dcmread

from pipeline.errors import PacsflowError

DICOMDIR = "DICOMDIR"
# Enough of a file to tell a DICOM Part 10 file: the preamble and "DICM", or (a file pydicom wrote
# of a dataset made in memory) the File Meta Information's first tag, as pipeline.dicomfile reads.
HEAD = 132


def looks_like_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM" or head[:2] == b"\x02\x00"


class Archives:
    """The zip files members are read from, the ``keep`` most recently read held open. Shared by the
    import's threads: ``zipfile`` reads members of one archive from several threads (each read
    seeks under the archive's lock), and a member being read keeps its file open after the archive
    is closed here."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._open: OrderedDict[Path, zipfile.ZipFile] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, path: Path, member: str) -> IO[bytes]:
        with self._lock:
            archive = self._open.pop(path, None) or zipfile.ZipFile(path)
            self._open[path] = archive
            while len(self._open) > self._keep:
                self._open.popitem(last=False)[1].close()
            return archive.open(member)

    def held(self) -> int:
        """How many are open now."""
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        with self._lock:
            while self._open:
                self._open.popitem()[1].close()


@dataclass(frozen=True)
class Item:
    """One file to store: a file on disk, or a member of a zip file."""

    name: str
    """As the user knows it: the path as given (under a folder given), ``archive.zip!member``."""
    key: str
    """What the journal remembers it by: the absolute path (``archive.zip``'s, ``!member``)."""
    size: int
    mtime_ns: int
    path: Path
    archives: Archives | None = field(default=None, compare=False)
    member: str = ""

    def open(self) -> IO[bytes]:
        if self.archives is not None:
            return self.archives.open(self.path, self.member)
        return self.path.open("rb")


@dataclass(frozen=True)
class Problem:
    """A path that could not be listed: a failure of the run, which goes on."""

    name: str
    reason: str


@dataclass
class Listing:
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    archives: Archives = field(default_factory=Archives)
    leave_out: frozenset[str] = frozenset()
    """Absolute paths (``os.path.abspath``: no system call per file) not to import."""

    def close(self) -> None:
        self.archives.close()


def listing(paths: list[Path], leave_out: Collection[Path] = ()) -> Listing:
    """Every file the paths hold, but those in ``leave_out``; a path that is not there is refused
    before anything is done."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise PacsflowError(f"no such file or folder: {', '.join(missing)}")
    # abspath, not resolve: ".." undone without a system call per file listed.
    found = Listing(leave_out=frozenset(os.path.abspath(p) for p in leave_out))  # noqa: PTH100
    for path in paths:
        if path.is_dir():
            _folder(path, found)
        elif path.name.upper() == DICOMDIR:
            _dicomdir(path, found)
        else:
            _file(path, found)
    return found


def _folder(folder: Path, found: Listing) -> None:
    def unreadable(exc: OSError) -> None:
        found.problems.append(Problem(str(exc.filename or folder), f"cannot list: {exc.strerror or exc}"))

    for directory, folders, files in os.walk(folder, onerror=unreadable):
        folders.sort()
        for name in sorted(files):
            if name.upper() != DICOMDIR:
                _file(Path(directory, name), found)


def _file(path: Path, found: Listing) -> None:
    if os.path.abspath(path) in found.leave_out:  # noqa: PTH100 (as in ``listing``)
        return
    try:
        stat = path.stat()
    except OSError as exc:
        found.problems.append(Problem(str(path), f"cannot read: {exc.strerror or exc}"))
        return
    if not S_ISREG(stat.st_mode):  # a FIFO or a device would block the worker that opens it
        found.problems.append(Problem(str(path), "not a regular file"))
        return
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        _archive(path, stat.st_mtime_ns, found)
        return
    found.items.append(Item(str(path), str(path.absolute()), stat.st_size, stat.st_mtime_ns, path))


def _archive(path: Path, mtime_ns: int, found: Listing) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        found.problems.append(Problem(str(path), f"cannot read the zip file: {exc}"))
        return
    absolute = path.absolute()
    for member in members:
        if member.is_dir() or Path(member.filename).name.upper() == DICOMDIR:
            continue
        found.items.append(
            Item(
                f"{path}!{member.filename}",
                f"{absolute}!{member.filename}",
                member.file_size,
                # A member has no mtime of its own worth trusting; a zip replaced is read again.
                mtime_ns,
                absolute,
                found.archives,
                member.filename,
            )
        )


def _dicomdir(path: Path, found: Listing) -> None:
    try:
        instances = list(_referenced(path))
    except Exception as exc:  # pydicom raises many kinds on a damaged DICOMDIR; each is its reason
        found.problems.append(Problem(str(path), f"cannot read the DICOMDIR: {exc}"))
        return
    for referenced in instances:
        _file(referenced, found)


def _referenced(path: Path) -> Iterator[Path]:
    """The files a DICOMDIR's records reference (Referenced File ID, PS3.10 8.5: components of
    uppercase letters, digits and ``_`` under the DICOMDIR's folder), in the order of its records.

    Read with ``dcmread`` rather than pydicom's ``FileSet``, which makes a staging folder for
    every DICOMDIR it opens."""
    dicomdir = dcmread(path)
    names = _Names()
    for record in dicomdir.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue  # a patient, study or series record
        parts = [file_id] if isinstance(file_id, str) else [str(part) for part in file_id]
        if any(part in ("", ".", "..") or "/" in part for part in parts):
            raise ValueError(f"a record references {'/'.join(parts)!r}, outside the DICOMDIR's folder")
        yield names.on_disk(path.parent, parts)


class _Names:
    """A Referenced File ID's file on a case-sensitive filesystem: the IDs are uppercase, but media
    copied by a tool that lowered the names (or mounted so) hold ``dicom/im0001``."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict[str, str]] = {}

    def on_disk(self, folder: Path, parts: list[str]) -> Path:
        exact = folder.joinpath(*parts)
        if exact.exists():
            return exact
        found = folder
        for part in parts:
            name = self._listed(found).get(part.upper())
            if name is None:
                return exact  # missing under any case: listed as such by ``_file``
            found = found / name
        return found

    def _listed(self, folder: Path) -> dict[str, str]:
        if folder not in self._folders:
            try:
                self._folders[folder] = {p.name.upper(): p.name for p in sorted(folder.iterdir())}
            except OSError:
                self._folders[folder] = {}
        return self._folders[folder]
