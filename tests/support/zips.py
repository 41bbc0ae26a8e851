"""Zip files read as a strict streaming reader reads them."""

from __future__ import annotations

import struct
import zlib


def read_as_a_stream(data: bytes) -> dict[str, bytes]:
    """The entries of ``data`` read as a streaming reader (Java's ``ZipInputStream``) reads them:
    local header after local header, each entry's length from its own header, the central
    directory never looked at. A stored entry whose sizes come after it (flag bit 3) cannot be read
    so: the check fails there."""
    entries: dict[str, bytes] = {}
    at = 0
    while data[at : at + 4] == b"PK\x03\x04":
        _, _, flags, method, _, _, crc, packed, size, name_length, extra_length = struct.unpack_from(
            "<IHHHHHIIIHH", data, at
        )
        name = data[at + 30 : at + 30 + name_length].decode()
        extra = data[at + 30 + name_length : at + 30 + name_length + extra_length]
        assert not flags & 0x08, f"{name}: its sizes follow it (a data descriptor)"
        assert method == 0, name
        if (packed, size) == (0xFFFFFFFF, 0xFFFFFFFF):
            size, packed = _zip64_sizes(extra)
        assert packed == size, f"{name}: stored, yet {packed} bytes for {size}"
        start = at + 30 + name_length + extra_length
        entries[name] = data[start : start + size]
        assert len(entries[name]) == size, f"{name}: the archive ends inside it"
        assert zlib.crc32(entries[name]) == crc, f"{name}: the CRC in its header is not its bytes'"
        at = start + size
    assert data[at : at + 4] == b"PK\x01\x02", "the central directory follows the entries"
    return entries


def _zip64_sizes(extra: bytes) -> tuple[int, int]:
    """A local header's sizes from its zip64 extra field (ID 1): uncompressed, then compressed."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 0x0001:
            sizes: tuple[int, int] = struct.unpack_from("<QQ", extra, at + 4)
            return sizes
        at += 4 + length
    raise AssertionError("sizes of 0xFFFFFFFF in a local header and no zip64 extra field")
