"""A study, a series or an instance as one zip (``Accept: application/zip``): the stored files as
they are, byte for byte, entries ``{study}/{series}/{sop}.dcm``, stored (no compression: pixel data
hardly compresses, and the archive is then as fast to make as the files are to read).

The zip is streamed: Python's ``zipfile`` writes into a ``_Sink`` that the answer drains after each
chunk, so a chunk (``CHUNK``) is the most of it ever in memory. The sink cannot seek, so ``zipfile``
writes each entry's CRC and sizes in a data descriptor after its bytes; entries whose size nears
4 GiB, and archives that pass it, get zip64 records. As for every retrieve, all the files are opened
before the status line (a missing one is a 404); a read that fails after it, or a file that ends
before the size it had when opened, breaks the connection: the client sees a broken transfer (no
central directory: no zip tool takes it for whole), never a complete-looking archive.
"""

from __future__ import annotations

import asyncio
import os
import time
import zipfile
from collections.abc import Sequence
from typing import IO, BinaryIO

from aiohttp import web

from egress.wado import sending
from egress.wado.accept import MediaRange
from pipeline import log
from pipeline.stores.instances import StoredInstance

MEDIA_TYPE = "application/zip"
CHUNK = 1 << 20
_DICOM_RANGES = ("application/dicom", "*/*", "application/*")
"""Ranges that keep the multipart answer: ``*/*`` and ``application/*`` as before there was a zip."""
_EARLIEST = (1980, 1, 1, 0, 0, 0)  # the zip format's first date

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


class _Sink:
    """What ``zipfile`` writes, held until the answer takes it: no ``seek``, no ``tell`` (``zipfile``
    then counts the offsets itself and writes data descriptors)."""

    def __init__(self) -> None:
        self._held: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._held.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: the answer takes what is held."""

    def close(self) -> None:
        """Nothing to close: the answer is the caller's."""

    def take(self) -> bytes:
        out = b"".join(self._held)
        self._held.clear()
        return out


def entry_name(instance: StoredInstance) -> str:
    return f"{instance.study_uid}/{instance.series_uid}/{instance.sop_uid}.dcm"


def _entry(instance: StoredInstance, file: BinaryIO) -> zipfile.ZipInfo:
    found = os.fstat(file.fileno())
    stamp = max(time.gmtime(found.st_mtime)[:6], _EARLIEST)
    info = zipfile.ZipInfo(entry_name(instance), date_time=stamp)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    # Known before the entry is written: zipfile picks zip64 records from it.
    info.file_size = found.st_size
    return info


def _copy(file: BinaryIO, entry: IO[bytes], left: int, sink: _Sink) -> tuple[bytes, int]:
    """One chunk of ``file`` through the entry (its CRC counted): the zip bytes it made, and what is
    left of the entry. Blocking: run in a thread."""
    chunk = file.read(min(left, CHUNK))
    if not chunk:
        raise FileShorter(f"the file ended {left} bytes before the size it had when it was opened")
    entry.write(chunk)
    return sink.take(), left - len(chunk)


def attachment(request: web.Request) -> str:
    """The archive's file name: the most specific UID the path names."""
    name = next(request.match_info[k] for k in ("instance", "series", "study") if k in request.match_info)
    return f'attachment; filename="{name}.zip"'


async def send(
    request: web.Request, found: Sequence[StoredInstance], files: Sequence[BinaryIO]
) -> web.StreamResponse:
    """``found`` (its files open in ``files``, the caller's to close) as a streamed zip."""
    # Sizes as the files are now: one that shrinks later fails its entry (``_copy``).
    entries = [_entry(instance, file) for instance, file in zip(found, files, strict=True)]
    response = sending.Answer(
        headers={"Content-Type": MEDIA_TYPE, "Content-Disposition": attachment(request)}
    )
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED)
    sent = 0
    try:
        for info, file in zip(entries, files, strict=True):
            left = info.file_size
            with archive.open(info, "w") as entry:
                while left:
                    data, left = await asyncio.to_thread(_copy, file, entry, left, sink)
                    await response.write(data)
            await response.write(sink.take())  # the entry's data descriptor
            sent += 1
        archive.close()
        await response.write(sink.take())  # the central directory
    except ConnectionResetError:
        raise  # the client left: there is no one to tell
    except Exception as exc:
        _log.warning(
            "answer_aborted",
            path=request.path,
            entries_sent=sent,
            entries=len(found),
            error=f"{type(exc).__name__}: {exc}",
        )
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
