"""A study, a series or an instance as one zip (``Accept: application/zip``): the stored files as
they are, byte for byte, entries ``{study}/{series}/{sop}.dcm``, stored (no compression: pixel data
hardly compresses, and the archive is then as fast to make as the files are to read), with
``Content-Disposition: attachment``; a HEAD gets the headers and no body.

The zip is streamed, a chunk (``CHUNK``) at a time, by ``stream_zip``, each step in a thread (reads
never block the loop). Each entry's local header carries its CRC-32 and sizes, and no data
descriptor follows its bytes: readers that go from local header to local header without the central
directory (Java's ``ZipInputStream``, streaming unzip tools) refuse a stored entry whose length
comes after it. The CRC costs one pass over each file just before its entry is sent (the second read
comes from the page cache), so the first bytes leave after one file's pass, not all of them.

Every entry has zip64 fields, whatever its size (48 bytes an entry): one format for every study,
rather than one that changes, and loses readers, once the archive passes 4 GiB or 65,535 entries
(which a study does with no file near 4 GiB). Java's ``ZipInputStream`` (7 and later), Info-ZIP
``unzip`` 6, Python and macOS's Archive Utility since 10.15 read it; older Archive Utilities refuse
zip64 whatever its size.

As for every retrieve, all the files are opened before the status line (a missing one is a 404); a
read that fails after it, a file that ends before the size it had when opened, or one whose bytes
changed after its CRC was taken (``stream_zip`` checks the CRC of what went out against the one
announced) breaks the connection: the client sees a broken transfer (no central directory: no zip
tool takes it for whole), never a complete-looking archive.
"""

from __future__ import annotations

import asyncio
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from aiohttp import web
from stream_zip import NO_COMPRESSION_64, MemberFile, stream_zip

from egress.wado import sending
from egress.wado.accept import MediaRange
from pipeline import log
from pipeline.stores.instances import StoredInstance

MEDIA_TYPE = "application/zip"
CHUNK = 1 << 20
_DICOM_RANGES = ("application/dicom", "*/*", "application/*")
"""Ranges that keep the multipart answer: ``*/*`` and ``application/*`` as before there was a zip."""
_EARLIEST = datetime(1980, 1, 1, tzinfo=UTC)  # the zip format's first date
_LATEST = datetime.fromtimestamp(2**31 - 1, UTC)
"""The last time the extended timestamp field holds (signed 32 bits): a file stamped later (a clock
set wrong) would otherwise abort the answer when its turn came."""
_MODE = stat.S_IFREG | 0o644

_log = log.get(__name__)


def wanted(ranges: Sequence[MediaRange]) -> bool:
    """Whether Accept (parsed, most preferred first) prefers the zip to a multipart answer."""
    for media in ranges:
        if media.media_type == MEDIA_TYPE and not media.multipart:
            return True
        if media.media_type in _DICOM_RANGES:
            return False
    return False


class FileShorter(OSError):
    """A file ended before the size it had when it was opened (truncated in place since)."""


def entry_name(instance: StoredInstance) -> str:
    return f"{instance.study_uid}/{instance.series_uid}/{instance.sop_uid}.dcm"


def _chunks(file: BinaryIO, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``file`` from its start, a chunk at a time."""
    file.seek(0)
    left = size
    while left:
        chunk = file.read(min(left, CHUNK))
        if not chunk:
            raise FileShorter(f"the file ended {left} bytes before the size it had when it was opened")
        left -= len(chunk)
        yield chunk


class _Entries:
    """The archive's entries, each one's CRC taken when it is its turn: ``stream_zip`` asks for the
    next entry once it has taken every byte of the one before, so ``done`` counts those."""

    def __init__(self, found: Sequence[StoredInstance], files: Sequence[BinaryIO]) -> None:
        # Sizes as the files are now, before the status line: one that shrinks later fails its
        # entry (``_chunks``) rather than making a shorter one.
        stats = [os.fstat(file.fileno()) for file in files]
        self._entries = list(zip(found, files, stats, strict=True))
        self.done = 0

    def __iter__(self) -> Iterator[MemberFile]:
        for number, (instance, file, found) in enumerate(self._entries):
            self.done = number
            crc = 0
            for chunk in _chunks(file, found.st_size):
                crc = zlib.crc32(chunk, crc)
            modified = min(max(datetime.fromtimestamp(found.st_mtime, UTC), _EARLIEST), _LATEST)
            method = NO_COMPRESSION_64(found.st_size, crc)
            yield entry_name(instance), modified, _MODE, method, _chunks(file, found.st_size)
        self.done = len(self._entries)


def attachment(request: web.Request) -> str:
    """The archive's file name: the most specific UID the path names."""
    name = next(request.match_info[k] for k in ("instance", "series", "study") if k in request.match_info)
    return f'attachment; filename="{name}.zip"'


async def send(
    request: web.Request, found: Sequence[StoredInstance], files: Sequence[BinaryIO]
) -> web.StreamResponse:
    """``found`` (its files open in ``files``, the caller's to close) as a streamed zip."""
    entries = _Entries(found, files)
    response = sending.Answer(
        headers={"Content-Type": MEDIA_TYPE, "Content-Disposition": attachment(request)}
    )
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    # Reads and CRCs are blocking: each step of the generator runs in a thread.
    archive = iter(stream_zip(entries, chunk_size=CHUNK))
    try:
        while (data := await asyncio.to_thread(next, archive, None)) is not None:
            await response.write(data)
    except ConnectionResetError:
        raise  # the client left: there is no one to tell
    except Exception as exc:
        _log.warning(
            "answer_aborted",
            path=request.path,
            entries_sent=entries.done,
            entries=len(found),
            error=f"{type(exc).__name__}: {exc}",
        )
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
