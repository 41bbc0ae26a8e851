"""Answers sent by ``egress.wado.sending`` over real HTTP, on asyncio's loop and on uvloop (what
``pacsflow web`` runs): the body is exactly the pieces, its Content-Length is what is sent, and a
file that changes under an answer gives the file as it was opened or a broken transfer, never a
short body a client would take as whole."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.test_utils import TestServer

from egress.wado import sending
from egress.wado.sending import FileRange, Piece
from tests.support.services import require
from tests.support.tls import make_pki

Check = Callable[[aiohttp.ClientSession, str], Awaitable[None]]
Pieces = Callable[[], list[Piece]]
LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


class _Sizes(AbstractAccessLogger):
    """What aiohttp reports as each answer's size (the access log's ``bytes``)."""

    seen: list[int] = []

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        _Sizes.seen.append(response.body_length)


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    return LOOPS[request.param]


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Callable[[str, bytes], int]]:
    """Files written under ``tmp_path``, opened for reading; closed at the end."""
    opened: list[int] = []

    def make(name: str, data: bytes) -> int:
        path = tmp_path / name
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        opened.append(fd)
        return fd

    yield make
    for fd in opened:
        os.close(fd)


def _serve(
    run: Callable[[Coroutine[Any, Any, None]], None],
    pieces: Pieces,
    check: Check,
    tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = sending.Answer(headers={"Content-Type": "application/octet-stream"})
        return await sending.send(request, response, pieces())

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/", handler)
        server = TestServer(app)
        await server.start_server(ssl=tls, access_log_class=_Sizes)
        connector = aiohttp.TCPConnector(ssl=client_tls) if client_tls else None
        try:
            async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
                await check(client, str(server.make_url("/")))
        finally:
            await server.close()

    run(main())


def _descriptors() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def _expected(pieces: list[Piece]) -> bytes:
    return b"".join(p if isinstance(p, bytes) else os.pread(p.fd, p.length, p.offset) for p in pieces)


def test_the_body_is_the_pieces_with_their_length(
    run: Callable[[Coroutine[Any, Any, None]], None], files: Callable[[str, bytes], int]
) -> None:
    first = files("first", os.urandom(300_000))
    second = files("second", os.urandom(70_000))
    pieces: list[Piece] = [
        b"--b\r\nContent-Type: application/dicom\r\n\r\n",
        FileRange(first, 0, 300_000),
        b"\r\n",
        b"",  # nothing, and joined with its neighbours
        b"--b\r\n\r\n",
        FileRange(second, 1_000, 50_000),  # a range inside a file (a frame)
        FileRange(second, 0, 0),
        b"\r\n--b--\r\n",
    ]
    expected = _expected(pieces)
    _Sizes.seen.clear()

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        for _ in range(3):  # one connection, kept alive between answers
            async with client.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(len(expected))
                assert "Transfer-Encoding" not in response.headers
                assert await response.read() == expected
        async with client.head(url) as response:
            assert response.status == 200 and response.headers["Content-Length"] == str(len(expected))
            assert await response.read() == b""

    _serve(run, lambda: list(pieces), check)
    # Status line and headers included, as aiohttp counts an answer sent through it.
    assert len(_Sizes.seen) == 4 and all(size > len(expected) for size in _Sizes.seen[:3])


def test_a_body_larger_than_the_socket_buffers_waits_for_the_client(
    run: Callable[[Coroutine[Any, Any, None]], None], files: Callable[[str, bytes], int]
) -> None:
    data = os.urandom(24 << 20)
    fd = files("big", data)

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        async with client.get(url) as response:
            received = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                received += chunk
            assert bytes(received) == b"<" + data + b">"

    _serve(run, lambda: [b"<", FileRange(fd, 0, len(data)), b">"], check)


def test_a_range_not_in_the_page_cache_is_read_from_a_thread(
    run: Callable[[Coroutine[Any, Any, None]], None], files: Callable[[str, bytes], int]
) -> None:
    data = os.urandom(4 << 20)
    fd = files("cold", data)
    os.fsync(fd)

    def evicted() -> bool:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            return True
        return False

    require(evicted(), "a file system whose clean pages posix_fadvise(DONTNEED) drops (not tmpfs)")

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        async with client.get(url) as response:
            assert await response.read() == data

    _serve(run, lambda: [FileRange(fd, 0, len(data))], check)


def test_a_file_replaced_after_it_was_opened_goes_out_as_it_was(
    run: Callable[[Coroutine[Any, Any, None]], None], tmp_path: Path
) -> None:
    path = tmp_path / "instance.dcm"
    old = os.urandom(200_000)
    path.write_bytes(old)

    def pieces() -> list[Piece]:
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        # A new copy renamed over it, as the SCP stores an instance sent again.
        (tmp_path / "new").write_bytes(os.urandom(10))
        (tmp_path / "new").replace(path)
        return [FileRange(fd, 0, size)]

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        async with client.get(url) as response:
            assert await response.read() == old

    _serve(run, pieces, check)


def test_a_file_cut_short_after_its_length_was_taken_breaks_the_transfer(
    run: Callable[[Coroutine[Any, Any, None]], None], files: Callable[[str, bytes], int]
) -> None:
    whole = files("whole", os.urandom(100_000))
    cut = files("cut", os.urandom(400_000))

    def pieces() -> list[Piece]:
        pieces: list[Piece] = [FileRange(whole, 0, 100_000), FileRange(cut, 0, 400_000), b"end"]
        os.truncate(f"/proc/self/fd/{cut}", 150_000)  # truncated in place, by hand
        return pieces

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(url) as response:
                assert response.headers["Content-Length"] == str(500_003)
                body = await response.read()
                pytest.fail(f"a whole answer of {len(body)} bytes")
        # Only that connection broke.
        async with client.head(url) as response:
            assert response.status == 200

    _serve(run, pieces, check)


def test_a_client_that_leaves_costs_no_descriptor(
    run: Callable[[Coroutine[Any, Any, None]], None], files: Callable[[str, bytes], int]
) -> None:
    data = os.urandom(16 << 20)
    fd = files("left", data)

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        before = _descriptors()
        host, port = url.split("//")[1].rstrip("/").split(":")
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(1 << 16)
            writer.transport.abort()  # unread bytes and a reset: the server's next write fails
        async with client.get(url) as response:  # the server still answers, in full
            assert await response.read() == data
        # The one connection kept alive, both its ends in this process: no descriptor of the
        # answers the clients left is still open.
        assert _descriptors() <= before + 2

    _serve(run, lambda: [FileRange(fd, 0, len(data))], check)


def test_over_tls_the_body_goes_through_the_transport(
    run: Callable[[Coroutine[Any, Any, None]], None], files: Callable[[str, bytes], int], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    client = ssl.create_default_context(cafile=str(pki.ca))
    data = os.urandom(3 << 20)
    fd = files("tls", data)

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url.replace("http://", "https://")) as response:
            assert response.headers["Content-Length"] == str(len(data) + 2)
            assert await response.read() == b"[" + data + b"]"

    _serve(run, lambda: [b"[", FileRange(fd, 0, len(data)), b"]"], check, server, client)


def test_small_pieces_are_joined_and_big_ones_never_copied(tmp_path: Path) -> None:
    frames = [bytes([n]) * (512 * 1024) for n in range(200)]  # decoded frames: bytes, not file ranges
    pieces: list[Piece] = []
    for frame in frames:
        pieces += [b"--boundary\r\n", b"Content-Type: application/octet-stream\r\n\r\n", frame, b"\r\n"]
    out = sending.joined(pieces)
    assert b"".join(p for p in out if isinstance(p, bytes)) == b"".join(
        p for p in pieces if isinstance(p, bytes)
    )
    # Each frame is the very object given (no copy, and no quadratic joining); only the small
    # pieces between two frames became one.
    assert [p for p in out if len(p) == 512 * 1024] == frames
    assert all(out[i] is frames[i // 2] for i in range(1, len(out), 2))
    assert len(out) == 2 * len(frames) + 1
