"""Answers made of bytes and ranges of open files, sent with a Content-Length: the ranges go from
the page cache to the socket by ``sendfile(2)``, never copied through Python.

uvloop has no ``loop.sendfile`` (aiohttp's ``FileResponse`` then reads the file in a thread and
writes it through the transport: two copies, a thread hop per chunk). Once the status line and
headers have left the transport's buffer, the body is written here on a duplicate of the
connection's socket descriptor: a duplicate, so that a connection the transport closes meanwhile
can never make us write to another connection that reuses its number. A range whose first or last
page is not in the page cache (a cold disk, a network mount) is sent from a thread, so that its
disk read never stalls the event loop; a full socket is waited for on the loop.

What can fail with a status fails before the status line: the caller opens every file and knows
every length first. A file that ends before its range once the status line is out (truncated in
place), a read error or a client that leaves, closes the connection: the client sees fewer bytes
than the Content-Length promised, a broken transfer, never a short body it would take as whole.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from pipeline import log

_log = log.get(__name__)
THREAD_CHUNK = 1 << 20
"""Most bytes one thread hop reads (a range that is not in the page cache, or a TLS connection)."""
_CLIENT_GONE = (ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True, slots=True)
class FileRange:
    """``length`` bytes of the open file ``fd`` from ``offset``."""

    fd: int
    offset: int
    length: int


Piece = bytes | FileRange


class Answer(web.StreamResponse):
    """A streamed answer whose status line and headers wait for its first bytes, as aiohttp's own
    ``Response`` does: they leave in one write and one segment, not two (a frame's answer took
    6 % of its time in that extra write). An aiohttp that no longer knows the setting sends them
    at once: one more write, nothing wrong."""

    _send_headers_immediately = False


_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
_STALLED_S = 60.0
"""How long a client may take nothing at all before its answer is given up."""


class FileShorter(OSError):
    """A file ended before a range the answer had promised (it was truncated after it was opened)."""


def body_length(pieces: Sequence[Piece]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.length for p in pieces)


_JOIN_BELOW = 64 * 1024
"""Neighbouring byte pieces shorter than this are joined (part headers and the CRLFs between
parts: one write, not several); longer ones are sent as they are, never copied."""


def joined(pieces: Sequence[Piece]) -> list[Piece]:
    """``pieces`` with neighbouring small bytes joined, empty ones left out."""
    out: list[Piece] = []
    small: list[bytes] = []

    def flush() -> None:
        if small:
            out.append(b"".join(small))
            small.clear()

    for piece in pieces:
        if isinstance(piece, bytes):
            if piece and len(piece) < _JOIN_BELOW:
                small.append(piece)
            elif piece:
                flush()
                out.append(piece)
            continue
        if piece.length:
            flush()
            out.append(piece)
    flush()
    return out


async def send(
    request: web.Request, response: web.StreamResponse, pieces: Sequence[Piece]
) -> web.StreamResponse:
    """``response`` with ``pieces`` as its body and their total as its Content-Length; HEAD gets the
    headers only. The files stay the caller's to close.

    A failure once the status line is out is logged and breaks the connection (see the module).
    """
    pieces = joined(pieces)
    response.content_length = body_length(pieces)
    writer = await response.prepare(request)
    if request.method == "HEAD" or writer is None:
        return response
    socket_: _Socket | None = None
    try:
        # The headers, with the first bytes when the body starts with some (``Answer``).
        first = pieces[0] if pieces and isinstance(pieces[0], bytes) else b""
        await writer.write(first)
        pieces = pieces[1:] if first else pieces
        # A compressed answer is the writer's to compress: it goes through the transport, chunked.
        socket_ = None if response.compression else _Socket.of(request)
        if socket_ is not None:
            await socket_.send(pieces)
        else:
            await _through_transport(writer, pieces)
    except _CLIENT_GONE:
        # The client left (a viewer moved on): no one to tell, and not an error of ours. The
        # access log still has the request, with the bytes that went out.
        _close(request)
        return response
    except Exception as exc:
        _log.warning(
            "answer_aborted",
            path=request.path,
            bytes_sent=socket_.sent if socket_ is not None else None,
            error=f"{type(exc).__name__}: {exc}",
        )
        _close(request)
        return response
    finally:
        if socket_ is not None:
            writer.output_size += socket_.sent  # what aiohttp reports as sent (the access log's bytes)
            socket_.close()
    await response.write_eof()
    return response


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


async def _through_transport(writer: AbstractStreamWriter, pieces: Sequence[Piece]) -> None:
    for piece in pieces:
        if isinstance(piece, bytes):
            await writer.write(piece)
            continue
        offset, left = piece.offset, piece.length
        while left:
            chunk = await asyncio.to_thread(os.pread, piece.fd, min(left, THREAD_CHUNK), offset)
            if not chunk:
                raise FileShorter(errno.EIO, f"the file ended {left} bytes before the end of its part")
            await writer.write(chunk)
            offset, left = offset + len(chunk), left - len(chunk)


class _Socket:
    """A duplicate of the connection's socket, non-blocking as the transport keeps it.

    Neither ``TCP_CORK`` around the answer nor ``MSG_MORE`` on the part headers helps: measured on
    loopback, corking doubled a 512 KiB frame's latency (0.6 ms against 0.3 ms).
    """

    def __init__(self, sock: socket.socket, transport: asyncio.Transport) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._probe = bytearray(1)
        self.sent = 0
        self._copy = False

    @classmethod
    def of(cls, request: web.Request) -> _Socket | None:
        """The connection's socket, once the transport has written all it holds (what is sent here
        must follow it); None for TLS (its bytes are the transport's to encrypt) or while the
        transport still holds bytes (its socket was full)."""
        transport = request.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return None
        raw = transport.get_extra_info("socket")
        if raw is None or transport.get_extra_info("sslcontext") is not None:
            return None
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        sock.setblocking(False)  # it is already; this keeps Python's own timeout out of send()
        return cls(sock, transport)

    def close(self) -> None:
        self._sock.close()

    async def send(self, pieces: Sequence[Piece]) -> None:
        for piece in pieces:
            if isinstance(piece, bytes):
                view = memoryview(piece)
                while view:
                    try:
                        count = self._sock.send(view)
                    except BlockingIOError:
                        await self._writable()
                        continue
                    view = view[count:]
                    self.sent += count
            else:
                await self._file(piece)

    async def _file(self, piece: FileRange) -> None:
        offset, left = piece.offset, piece.length
        while left:
            if self._copy:
                offset, left = await self._copied(piece.fd, offset, left)
                continue
            try:
                if self._resident(piece.fd, offset, left):
                    count = os.sendfile(self._fd, piece.fd, offset, left)
                else:
                    count = await _sendfile_in_thread(self._fd, piece.fd, offset, left)
            except BlockingIOError:
                count = -1
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                self._copy = True  # a file system sendfile cannot read from (some FUSE mounts)
                continue
            if count < 0:
                await self._writable()
                continue
            if count == 0:
                raise FileShorter(errno.EIO, f"the file ended {left} bytes before the end of its part")
            offset, left = offset + count, left - count
            self.sent += count

    async def _copied(self, fd: int, offset: int, left: int) -> tuple[int, int]:
        """One chunk of a range read in a thread and sent through our own buffer: where
        ``sendfile`` cannot read the file."""
        chunk = await asyncio.to_thread(os.pread, fd, min(left, 1 << 20), offset)
        if not chunk:
            raise FileShorter(errno.EIO, f"the file ended {left} bytes before the end of its part")
        await self.send([chunk])
        return offset + len(chunk), left - len(chunk)

    def _resident(self, fd: int, offset: int, length: int) -> bool:
        """Whether the range's first and last bytes are in the page cache (``RWF_NOWAIT`` reads
        them only if they are): the rest of a file read as a whole almost always is too."""
        try:
            return all(
                os.preadv(fd, [self._probe], at, os.RWF_NOWAIT) >= 0 for at in (offset, offset + length - 1)
            )
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a file system that cannot tell
            return False

    async def _writable(self) -> None:
        """Until the socket takes more. aiohttp may close the connection meanwhile (a client that
        half-closed and stopped reading) and then forgets this handler: nothing would wake it, so
        the wait looks again every second, and gives up after ``_STALLED_S`` of no room at all."""
        waited = 0.0
        while True:
            if self._transport.is_closing():
                raise ConnectionResetError("the connection was closed")
            if waited >= _STALLED_S:
                raise ConnectionResetError(f"the client took nothing for {_STALLED_S:g} s")
            waiter = self._loop.create_future()

            def ready(waiter: asyncio.Future[None] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self._loop.add_writer(self._fd, ready)
            try:
                await asyncio.wait_for(waiter, 1.0)
                return
            except TimeoutError:
                waited += 1.0
            finally:
                self._loop.remove_writer(self._fd)


async def _sendfile_in_thread(sock: int, fd: int, offset: int, count: int) -> int:
    """One ``sendfile`` in a thread: the bytes sent, or -1 when the socket is full.

    The thread gets descriptors of its own: if the answer is cancelled while the thread still
    waits for its turn, ours are closed, and their numbers may be another file's by the time it runs.
    """
    with ExitStack() as owned:
        sock = os.dup(sock)
        owned.callback(os.close, sock)
        fd = os.dup(fd)
        owned.callback(os.close, fd)
        running = asyncio.get_running_loop().run_in_executor(None, _sendfile_once, sock, fd, offset, count)
        owned.pop_all()  # submitted: the thread's now
    return await running


def _sendfile_once(sock: int, fd: int, offset: int, count: int) -> int:
    """Closes the descriptors it is given."""
    try:
        return os.sendfile(sock, fd, offset, min(count, THREAD_CHUNK))
    except BlockingIOError:
        return -1
    finally:
        os.close(sock)
        os.close(fd)
