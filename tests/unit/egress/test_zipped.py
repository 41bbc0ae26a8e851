"""The zip download (``egress.wado.zipped.send``) over real HTTP, from real files, on asyncio's loop
and on uvloop (what ``pacsflow web`` runs): every entry's CRC and sizes are in its own local header
(a streaming reader reads it), each CRC is taken when its entry's turn comes, and a file that changes
or shrinks after its CRC was taken breaks the transfer. The same answer from a real stack is checked
in tests/integration/test_capabilities.py."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import zipfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from egress.wado import zipped
from pipeline.stores.instances import StoredInstance
from tests.support.zips import read_as_a_stream

Check = Callable[[aiohttp.ClientSession, str], Awaitable[None]]
STUDY = "1.2.826.0.1.3680043.8.498.1"
BIG = 64 << 20
"""Past what loopback can hold in flight (tcp_rmem's 32 MiB ceiling and tcp_wmem's 4 MiB): while the
client has read only a header, the server is still far from this file's end."""


def _instance(series: int, sop: int) -> StoredInstance:
    return StoredInstance(
        study_uid=STUDY,
        series_uid=f"{STUDY}.{series}",
        sop_uid=f"{STUDY}.{series}.{sop}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        number_of_frames=None,
        file_path=f"{series}/{sop}.dcm",
        frame_index=None,
    )


def _serve(
    root: Path,
    found: list[StoredInstance],
    check: Check,
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        opened = [(root / i.file_path).open("rb") for i in found]
        try:
            return await zipped.send(request, found, opened)
        finally:
            for file in opened:
                file.close()

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/studies/{study}", handler)
        async with TestServer(app) as server, aiohttp.ClientSession() as client:
            await check(client, str(server.make_url(f"/studies/{STUDY}")))

    run(main())


def _write(root: Path, instance: StoredInstance, data: bytes) -> Path:
    path = root / instance.file_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _big(root: Path, instance: StoredInstance) -> Path:
    """A ``BIG`` file of zeros, sparse: nothing written to disk."""
    path = _write(root, instance, b"")
    os.truncate(path, BIG)
    return path


async def _first_header(response: aiohttp.ClientResponse) -> bytes:
    """The first entry's local header, read off the answer: by then its CRC has been taken."""
    fixed = await response.content.readexactly(30)
    name_length, extra_length = struct.unpack_from("<HH", fixed, 26)
    return fixed + await response.content.readexactly(name_length + extra_length)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_every_entry_carries_its_crc_and_sizes_in_its_own_header(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    # Empty, smaller than a chunk, and over two chunks without filling the last.
    contents = [b"", os.urandom(1000), os.urandom(2 * zipped.CHUNK + 3)]
    found = [_instance(1, 1), _instance(1, 2), _instance(2, 1)]
    paths = [_write(tmp_path, instance, data) for instance, data in zip(found, contents, strict=True)]
    # Stamped before the zip format's first date and after the last its timestamp field holds.
    os.utime(paths[0], (0, 0))
    os.utime(paths[1], (2**31 + 10**8, 2**31 + 10**8))
    expected = {zipped.entry_name(i): data for i, data in zip(found, contents, strict=True)}

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        async with client.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == zipped.MEDIA_TYPE
            assert response.headers["Content-Disposition"] == f'attachment; filename="{STUDY}.zip"'
            body = await response.read()
        assert read_as_a_stream(body) == expected
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert archive.testzip() is None
            assert {info.filename: archive.read(info) for info in archive.infolist()} == expected
            assert [info.date_time[0] for info in archive.infolist()[:2]] == [1980, 2038]
        async with client.head(url) as response:
            assert response.status == 200
            assert response.headers["Content-Disposition"] == f'attachment; filename="{STUDY}.zip"'
            assert await response.read() == b""

    _serve(tmp_path, found, check, run)


def test_each_crc_is_taken_when_its_entry_is_sent_not_before(tmp_path: Path) -> None:
    """The second file, rewritten while the first one is on its way, goes out as rewritten: its CRC
    was not taken with the first one's (which would also hold the first byte back)."""
    found = [_instance(1, 1), _instance(1, 2)]
    _big(tmp_path, found[0])
    second = _write(tmp_path, found[1], b"before" * 1000)

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        async with client.get(url) as response:
            header = await _first_header(response)
            second.write_bytes(b"after!" * 1000)  # in place: the open file sees it
            body = header + await response.read()
        entries = read_as_a_stream(body)
        assert entries[zipped.entry_name(found[1])] == b"after!" * 1000

    _serve(tmp_path, found, check)


def _rewrite_its_end(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(-4096, os.SEEK_END)
        file.write(b"\xff" * 4096)


def _cut_in_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("change", [_rewrite_its_end, _cut_in_half], ids=["rewritten", "shortened"])
def test_a_file_changed_after_its_crc_was_taken_breaks_the_transfer(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    """Rewritten (same size, the CRC sent is no longer its bytes') or shortened, after its header
    went out: the connection breaks before the central directory, so no reader takes the download
    for whole."""
    found = [_instance(1, 1)]
    path = _big(tmp_path, found[0])

    async def check(client: aiohttp.ClientSession, url: str) -> None:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(url) as response:
                await _first_header(response)
                change(path)
                body = await response.read()
                pytest.fail(f"a whole answer of {len(body)} more bytes")

    _serve(tmp_path, found, check)
