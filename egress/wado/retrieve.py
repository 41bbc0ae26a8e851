"""WADO-RS retrieval (PS3.18 10.4): instances, frames, bulk data, rendered images and thumbnails.

Instances go out as the files were stored (their datasets byte for byte) unless the request asks for
another transfer syntax. Frames are located through the frame index the index agent stored; for an
instance indexed without one, through one made from its file once (``frame_offsets``). Whatever
goes out as it is stored (instances, frames) is sent with a Content-Length, from the page cache
to the socket (``sending``): a study never sits in memory, nor passes through Python. What is
transcoded or decoded is made in a thread and streamed chunked, part by part.

An instance stored in a syntax the viewer cannot decode has a converted copy once the conversion
agent made it (``pipeline.conversion``). Where the client lets the server pick the syntax
(``transfer-syntax=*``, ``*/*``, no Accept: what OHIF sends), its instance and frames come from
that copy; a client that names the stored syntax gets the stored bytes.

Files are read through ``storage.StoredFiles``, which says what an ``OSError`` means (a file gone:
404; the storage unreadable: 503). An answer opens all its files before its status line; a part
that still fails after it breaks the connection (``Multipart.send``, ``sending.send``).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TypeGuard

from aiohttp import web
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from egress.wado import accept, frame_offsets, rendering, sending, transcode, zipped
from egress.wado.accept import ANY_SYNTAX, IMAGE_MEDIA_TYPES, NATIVE, MediaRange, syntax_name
from egress.wado.errors import BadRequest, NotAcceptable, NotFound
from egress.wado.keys import POOL, SETTINGS
from egress.wado.numbers import whole
from egress.wado.sending import FileRange, Piece
from egress.wado.storage import ConvertedCopyMissing, StoredFiles
from egress.wado.urls import tenant_of, uid
from pipeline import conversion, frames, log
from pipeline.stores import instances
from pipeline.stores.instances import StoredInstance

CHUNK = 1 << 20
DICOM = "application/dicom"
OCTETS = "application/octet-stream"

_log = log.get(__name__)
Body = bytes | AsyncIterator[bytes]


class Multipart:
    """A ``multipart/related`` answer written part by part (PS3.18 8.6.1.2)."""

    def __init__(self, media_type: str) -> None:
        self.boundary = os.urandom(16).hex()
        self.response = sending.Answer(
            headers={"Content-Type": f'multipart/related; type="{media_type}"; boundary={self.boundary}'}
        )

    async def send(self, request: web.Request, parts: Iterable[tuple[str, Body]]) -> web.StreamResponse:
        """The headers, then each (content type, body) part; HEAD gets no parts.

        Whatever can fail with a status must have failed before this is called. A part that fails
        once the status line is out closes the connection without the closing boundary or the
        last chunk: the client sees a broken transfer, never a short body it would take as whole.
        """
        await self.response.prepare(request)
        if request.method == "HEAD":
            return self.response
        sent = 0
        try:
            for content_type, body in parts:
                await self._part(content_type, body)
                sent += 1
        except ConnectionResetError:
            raise  # the client left: there is no one to tell
        except Exception as exc:
            _log.warning(
                "answer_aborted", path=request.path, parts_sent=sent, error=f"{type(exc).__name__}: {exc}"
            )
            if request.transport is not None:
                request.transport.close()
            return self.response
        await self.response.write(f"--{self.boundary}--\r\n".encode())
        await self.response.write_eof()
        return self.response

    async def send_known(
        self, request: web.Request, parts: Iterable[tuple[str, Sequence[Piece]]]
    ) -> web.StreamResponse:
        """Each (content type, pieces) part, with a Content-Length: every length is known before
        the status line, and file ranges go out by ``sendfile`` (``sending``)."""
        pieces: list[Piece] = []
        for content_type, body in parts:
            pieces.append(self._head(content_type))
            pieces.extend(body)
            pieces.append(b"\r\n")
        pieces.append(f"--{self.boundary}--\r\n".encode())
        return await sending.send(request, self.response, pieces)

    def _head(self, content_type: str) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()

    async def _part(self, content_type: str, body: Body) -> None:
        await self.response.write(self._head(content_type))
        if isinstance(body, bytes):
            await self.response.write(body)
        else:
            async for chunk in body:
                await self.response.write(chunk)
        await self.response.write(b"\r\n")


def _stored_files(request: web.Request) -> StoredFiles:
    settings = request.app[SETTINGS]
    return StoredFiles(settings.storage_root, tenant_of(request, settings))


async def _instances(request: web.Request) -> list[StoredInstance]:
    tenant = tenant_of(request, request.app[SETTINGS])
    study = uid(request, "study", "StudyInstanceUID")
    series = uid(request, "series", "SeriesInstanceUID") if "series" in request.match_info else None
    sop = uid(request, "instance", "SOPInstanceUID") if "instance" in request.match_info else None
    found = await instances.find(request.app[POOL], tenant, study, series, sop)
    if not found:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFound(f"no {what}" + (f" in study {study}" if series or sop else ""))
    return found


def _dicom_syntax(ranges: Sequence[MediaRange], instance: StoredInstance) -> tuple[str, bool] | None:
    """(what to send an instance as, whether from its converted copy); None when no range can be met.

    Where the client lets the server pick (``transfer-syntax=*``, ``*/*``, no Accept), an instance
    with a converted copy is sent as that copy: what the viewer decodes. A client that names the
    stored syntax gets the stored file, byte for byte.
    """
    stored, converted = instance.transfer_syntax_uid, instance.converted_syntax
    for media in ranges:
        if media.media_type not in (DICOM, "*/*", "application/*"):
            continue
        # PS3.18 8.7.3.5.2: application/dicom without a transfer syntax means Explicit VR Little Endian.
        wanted = media.transfer_syntax or (
            ExplicitVRLittleEndian if media.media_type == DICOM else ANY_SYNTAX
        )
        if wanted == ANY_SYNTAX:
            return (converted, True) if converted else (stored, False)
        if wanted == stored:
            return stored, False
        # Lossless both ways: the copy has the stored pixels, and decodes faster.
        if converted and transcode.can_transcode(converted, wanted):
            return wanted, True
        if transcode.can_transcode(stored, wanted):
            return wanted, False
    return None


def _as_stored(instance: StoredInstance) -> StoredInstance:
    """The instance read as stored, its converted copy ignored."""
    return replace(instance, converted_syntax=None, converted_frame_index=None)


def _plan(ranges: Sequence[MediaRange], found: Sequence[StoredInstance], accepted: str | None) -> list[_Sent]:
    plan = []
    for instance in found:
        chosen = _dicom_syntax(ranges, instance)
        if chosen is None:
            raise NotAcceptable(
                f"instance {instance.sop_uid} is stored as {syntax_name(instance.transfer_syntax_uid)} "
                f"and cannot be converted to what Accept asks ({accepted!r}); "
                "ask for transfer-syntax=* to get it as stored"
            )
        plan.append(_Sent(instance, *chosen))
    return plan


@dataclass(frozen=True)
class _Sent:
    instance: StoredInstance
    syntax: str
    converted: bool
    """Read from its converted copy (in ``converted_syntax``), not its stored file."""

    @property
    def source_syntax(self) -> str:
        copy = self.instance.converted_syntax
        return copy if self.converted and copy else self.instance.transfer_syntax_uid


async def retrieve(request: web.Request) -> web.StreamResponse:
    """A study, a series or an instance, as ``multipart/related; type="application/dicom"``; or,
    when Accept prefers it, as a zip of the files as stored (``zipped``)."""
    found = await _instances(request)
    ranges = accept.parse(request.headers.get("Accept"))
    accepted = request.headers.get("Accept")
    if zipped.wanted(ranges):
        return await _zip(request, found)
    plan = _plan(ranges, found, accepted)
    stored = _stored_files(request)
    try:
        opened = await asyncio.to_thread(stored.open_all, found, [sent.converted for sent in plan])
    except ConvertedCopyMissing:
        # The index says a copy is there and it is not (removed by hand): the stored files still
        # answer, and the index is what `converted_copy_missing` in the log points at.
        plan = _plan(ranges, [_as_stored(i) for i in found], accepted)
        opened = await asyncio.to_thread(stored.open_all, found)
    try:
        whole = [_whole_file(file) for file in opened]
        if all(sent.syntax == sent.source_syntax for sent in plan) and _every(whole):
            return await Multipart(DICOM).send_known(
                request,
                (
                    (f"{DICOM}; transfer-syntax={sent.syntax}", [part])
                    for sent, part in zip(plan, whole, strict=True)
                ),
            )
        parts = (
            (f"{DICOM}; transfer-syntax={sent.syntax}", _part_body(stored, sent, file))
            for sent, file in zip(plan, opened, strict=True)
        )
        return await Multipart(DICOM).send(request, parts)
    finally:
        for file in opened:
            file.close()


async def _zip(request: web.Request, found: list[StoredInstance]) -> web.StreamResponse:
    opened = await asyncio.to_thread(_stored_files(request).open_all, found)
    try:
        return await zipped.send(request, found, opened)
    finally:
        for file in opened:
            file.close()


def _whole_file(file: BinaryIO) -> FileRange | None:
    """All of an open file, when it says how long it is: a regular file, not empty. Files are
    replaced by rename, so an open file keeps its size; one that may not (a device, a file
    truncated by hand) goes out chunked, read until it ends."""
    try:
        found = os.fstat(file.fileno())
    except OSError:
        return None
    if not stat.S_ISREG(found.st_mode) or found.st_size <= 0:
        return None
    return FileRange(file.fileno(), 0, found.st_size)


def _every(ranges: list[FileRange | None]) -> TypeGuard[list[FileRange]]:
    return all(ranges)


async def _part_body(stored: StoredFiles, sent: _Sent, file: BinaryIO) -> AsyncIterator[bytes]:
    """The file (or converted copy) as it is, in chunks; or transcoded to ``sent.syntax``, in one piece."""
    with stored.reading(sent.instance, sent.converted):
        if sent.syntax != sent.source_syntax:
            yield await asyncio.to_thread(conversion.reencode, file, sent.syntax)
            return
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk


def _frame_numbers(text: str) -> list[int]:
    numbers = []
    for piece in text.split(","):  # aiohttp has decoded %2C already
        piece = piece.strip()
        number = whole(piece)
        if number is None or piece[0] in "+-":
            raise BadRequest(f"frame list {text!r}: {piece!r} is not a frame number (1, 2, ...)")
        if number < 1:
            raise BadRequest(f"frame list {text!r}: frames are numbered from 1")
        numbers.append(number)
    return numbers


def _sent_as(syntax: str) -> tuple[str, str]:
    """(transfer syntax, part media type) of frames read as they are from a file in ``syntax``:
    native frames are sent as Explicit VR Little Endian octets, compressed ones as their image type."""
    if syntax in NATIVE:
        return ExplicitVRLittleEndian, OCTETS
    return syntax, IMAGE_MEDIA_TYPES.get(syntax, OCTETS)


def _frame_syntax(
    ranges: Sequence[MediaRange], stored: str, converted: str | None
) -> tuple[str, str, bool] | None:
    """(transfer syntax, part media type, whether from the converted copy) for frames of an
    instance stored in ``stored`` (with a converted copy in ``converted``, if it has one).

    Where the client lets the server pick, frames come from the converted copy: the viewer
    decodes it. A client that names the stored syntax gets the stored frames as they are.
    """
    own = _sent_as(stored)
    copy = _sent_as(converted) if converted else None
    picked = (*copy, True) if copy else (*own, False)
    for media in ranges:
        wanted = media.transfer_syntax
        if media.media_type in ("*/*", "application/*") and wanted in (None, ANY_SYNTAX):
            return picked
        if media.media_type == OCTETS:
            wanted = wanted or ExplicitVRLittleEndian
            if wanted == ANY_SYNTAX:
                return picked[0], OCTETS, picked[2]
            if wanted == own[0]:
                return own[0], OCTETS, False
            if copy and wanted == copy[0]:
                return copy[0], OCTETS, True
            if wanted == ExplicitVRLittleEndian and conversion.decodable(stored):
                return ExplicitVRLittleEndian, OCTETS, False
        elif media.media_type == IMAGE_MEDIA_TYPES.get(stored) and wanted in (None, ANY_SYNTAX, stored):
            return stored, media.media_type, False
        elif (
            converted
            and media.media_type == IMAGE_MEDIA_TYPES.get(converted)
            and wanted in (None, ANY_SYNTAX, converted)
        ):
            return converted, media.media_type, True
    return None


async def _read_frames(
    path: Path, syntax_of_file: str, index: bytes | None, numbers: list[int], syntax: str
) -> list[bytes]:
    """Frames ``numbers`` of the file at ``path`` (in ``syntax_of_file``, described by ``index``)
    in ``syntax``: as they are, or decoded to native pixels."""
    if syntax != ExplicitVRLittleEndian or syntax_of_file in NATIVE:
        if index is not None:
            return await asyncio.to_thread(frames.read_frames, path, index, numbers)
        return await asyncio.to_thread(frames.read_frames_parsing, path, numbers)
    return [await asyncio.to_thread(transcode.decode_frame, path, n) for n in numbers]


async def frame_list(request: web.Request) -> web.StreamResponse:
    """``/frames/{list}``: the frames asked for, in order, each in its own part."""
    numbers = _frame_numbers(request.match_info["frames"])
    (instance,) = await _instances(request)
    if not instance.number_of_frames:
        raise NotFound(f"instance {instance.sop_uid} has no frames (no pixel data)")
    beyond = [n for n in numbers if n > instance.number_of_frames]
    if beyond:
        raise NotFound(
            f"instance {instance.sop_uid} has {instance.number_of_frames} frame(s); "
            f"there is no frame {', '.join(map(str, beyond))}"
        )
    with ExitStack() as files:
        try:
            syntax, media_type, parts = await _frames(request, instance, numbers, files)
        except ConvertedCopyMissing:
            # Logged as `converted_copy_missing`; the stored file still answers.
            syntax, media_type, parts = await _frames(request, _as_stored(instance), numbers, files)
        return await Multipart(media_type).send_known(
            request, ((f"{media_type}; transfer-syntax={syntax}", part) for part in parts)
        )


async def _frames(
    request: web.Request, instance: StoredInstance, numbers: list[int], files: ExitStack
) -> tuple[str, str, list[list[Piece]]]:
    """(transfer syntax, media type, each frame's pieces) of what Accept asks for; the files the
    pieces read from are closed by ``files``."""
    ranges = accept.parse(request.headers.get("Accept"))
    chosen = _frame_syntax(ranges, instance.transfer_syntax_uid, instance.converted_syntax)
    if chosen is None:
        raise NotAcceptable(
            f"frames of instance {instance.sop_uid} are stored as "
            f"{syntax_name(instance.transfer_syntax_uid)}; Accept {request.headers.get('Accept')!r} "
            "asks for what cannot be made from them (transfer-syntax=* gets them as stored)"
        )
    syntax, media_type, converted = chosen
    if converted and instance.converted_syntax:
        source, index = instance.converted_syntax, instance.converted_frame_index
    else:
        source, index = instance.transfer_syntax_uid, instance.frame_index
    try:
        with _stored_files(request).reading(instance, converted) as path:
            if syntax != ExplicitVRLittleEndian or source in NATIVE:  # sent as they are stored
                # Opened on the loop: from the page cache that costs less than a thread hop.
                fd = os.open(path, os.O_RDONLY)
                files.callback(os.close, fd)
                if index is None:
                    index = await frame_offsets.of_file(fd)
                found = _frame_ranges(fd, index, numbers) if index is not None else None
                if found is not None:
                    return syntax, media_type, found
            data = await _read_frames(path, source, index, numbers, syntax)
    except frames.FrameNotFound as exc:
        raise NotFound(str(exc)) from None
    return syntax, media_type, [[frame] for frame in data]


def _frame_ranges(fd: int, index: bytes, numbers: list[int]) -> list[list[Piece]] | None:
    """The frames as ranges of the open file ``fd``; None when it is shorter than its index says,
    to be read the way that tells why (``frames.read_frames``)."""
    spans = frames.frame_spans(index, numbers)
    size = os.fstat(fd).st_size
    if any(offset + length > size for frame in spans for offset, length in frame):
        return None
    return [[FileRange(fd, offset, length) for offset, length in frame] for frame in spans]


def _bulk_value(path: Path, segments: list[str]) -> bytes | None:
    """The value a BulkDataURI's path names (``7FE00010`` or ``00880200/0/7FE00010``)."""
    nested = len(segments) > 1
    # Top level: deferred, so only the value asked for is read (pydicom seeks to it).
    ds: Dataset = dcmread(path, defer_size=None if nested else 1024)
    try:
        for position in range(0, len(segments) - 1, 2):
            ds = ds[int(segments[position], 16)].value[int(segments[position + 1])]
        value = ds[int(segments[-1], 16)].value
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return bytes(value) if isinstance(value, bytes | bytearray) else None


async def bulkdata(request: web.Request) -> web.StreamResponse:
    segments = [s for s in request.match_info["path"].split("/") if s]
    valid = len(segments) % 2 == 1 and all(
        len(s) == 8 and all(c in "0123456789abcdefABCDEF" for c in s)
        if i % 2 == 0
        else s.isascii() and s.isdigit()
        for i, s in enumerate(segments)
    )
    if not valid:
        raise BadRequest(
            f"bulk data path {request.match_info['path']!r}: it is a tag (ggggeeee), or sequence tag, "
            "item index and tag (00880200/0/7FE00010)"
        )
    (instance,) = await _instances(request)
    with _stored_files(request).reading(instance) as path:
        if segments == ["7FE00010"] and instance.number_of_frames:
            # Pixel data: its frames (compressed ones cannot be cut from one value).
            numbers = list(range(1, instance.number_of_frames + 1))
            stored_syntax = instance.transfer_syntax_uid
            parts = await _read_frames(path, stored_syntax, instance.frame_index, numbers, stored_syntax)
            native = instance.transfer_syntax_uid in NATIVE
            if native:
                parts = [b"".join(parts)]
            syntax = ExplicitVRLittleEndian if native else instance.transfer_syntax_uid
        else:
            value = await asyncio.to_thread(_bulk_value, path, segments)
            if value is None:
                raise NotFound(f"instance {instance.sop_uid} has no binary value at {'/'.join(segments)}")
            parts, syntax = [value], ""
    content_type = f"{OCTETS}; transfer-syntax={syntax}" if syntax else OCTETS
    return await Multipart(OCTETS).send_known(request, ((content_type, [part]) for part in parts))


async def _render(
    request: web.Request, instance: StoredInstance, frame: int, thumbnail: bool
) -> web.Response:
    options = rendering.RenderOptions.parse(request.query, thumbnail=thumbnail)
    media_type = rendering.choose_media_type(request.headers.get("Accept"))
    if media_type is None:
        raise NotAcceptable(
            f"rendered images are {' or '.join(rendering.MEDIA_TYPES)}; "
            f"Accept {request.headers.get('Accept')!r} excludes both"
        )
    if not instance.number_of_frames:
        raise BadRequest(f"instance {instance.sop_uid} has no pixel data to render")
    if frame > instance.number_of_frames:
        raise NotFound(
            f"instance {instance.sop_uid} has {instance.number_of_frames} frame(s); no frame {frame}"
        )
    try:
        with _stored_files(request).reading(instance) as path:
            body = await asyncio.to_thread(rendering.render, path, frame, options, media_type)
    except rendering.RenderError as exc:
        raise NotAcceptable(str(exc)) from None
    return web.Response(body=body, content_type=media_type)


async def rendered(request: web.Request) -> web.StreamResponse:
    (instance,) = await _instances(request)
    frame = _frame_numbers(request.match_info.get("frames", "1"))
    if len(frame) != 1:
        raise BadRequest("a rendered frame is one frame")
    return await _render(request, instance, frame[0], thumbnail=False)


async def thumbnail(request: web.Request) -> web.StreamResponse:
    """Of an instance or a frame; of a series, its middle image; of a study, that of its first series."""
    found = [i for i in await _instances(request) if i.number_of_frames]
    if not found:
        raise NotFound("nothing here has pixel data to make a thumbnail of")
    if "instance" in request.match_info:
        frame = _frame_numbers(request.match_info.get("frames", "1"))
        if len(frame) != 1:
            raise BadRequest("a thumbnail is of one frame")
        return await _render(request, found[0], frame[0], thumbnail=True)
    series = [i for i in found if i.series_uid == found[0].series_uid]
    return await _render(request, series[len(series) // 2], 1, thumbnail=True)


def add_routes(app: web.Application, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        study = f"{prefix}/studies/{{study}}"
        series = f"{study}/series/{{series}}"
        instance = f"{series}/instances/{{instance}}"
        app.router.add_get(f"{instance}/frames/{{frames}}", frame_list)  # first: see create_app
        for path in (study, series, instance):
            app.router.add_get(path, retrieve)
            app.router.add_get(f"{path}/thumbnail", thumbnail)
        app.router.add_get(f"{instance}/rendered", rendered)
        app.router.add_get(f"{instance}/frames/{{frames}}/rendered", rendered)
        app.router.add_get(f"{instance}/frames/{{frames}}/thumbnail", thumbnail)
        app.router.add_get(f"{instance}/bulkdata/{{path:.+}}", bulkdata)
