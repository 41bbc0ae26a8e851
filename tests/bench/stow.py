"""The bench's STOW-RS client: multipart/related bodies of DICOM files, posted to a server's
``/studies`` as a DICOMweb uploader does (keep-alive, a few requests in flight).

Bodies are built before the clock starts, so what is timed is the server, not the client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

BOUNDARY = "pacsflow-bench-7d1c0e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
HEADERS = {"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
BOUND_S = 900.0  # a whole upload; a server that stalls fails the bench instead of hanging it


@dataclass(frozen=True)
class Body:
    """One request: ``parts`` Part 10 files, ``size`` bytes of DICOM (the multipart framing aside)."""

    payload: bytes
    parts: int
    size: int


def body(files: Sequence[bytes]) -> Body:
    framed = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
        for f in files
    )
    return Body(framed + b"--" + BOUNDARY.encode() + b"--\r\n", len(files), sum(map(len, files)))


def checked(url: str, status: int, answer: bytes, parts: int) -> None:
    """A store the server did not confirm instance by instance fails the bench: a rate of
    rejected uploads would be a meaningless figure."""
    where = f"POST {url}: {status}"
    if status != 200:
        raise SystemExit(f"{where} {answer[:500]!r}")
    try:
        found = json.loads(answer)
    except ValueError as error:
        raise SystemExit(f"{where} with a body that is not DICOM JSON ({error}): {answer[:300]!r}") from error
    failed = found.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    stored = found.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    if failed or len(stored) != parts:
        raise SystemExit(f"{where}: {len(stored)} of {parts} stored, {len(failed)} failed: {answer[:500]!r}")


def session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=BOUND_S),
        headers=HEADERS,
    )


async def post(client: aiohttp.ClientSession, url: str, one: Body) -> None:
    async with client.post(url, data=one.payload) as response:
        checked(url, response.status, await response.read(), one.parts)


async def post_all(url: str, bodies: Sequence[Body], concurrency: int) -> tuple[float, list[float]]:
    """Wall seconds from the first request sent to the last answer, and each request's ms."""
    spent: list[float] = []
    next_index = 0
    async with session(concurrency) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                one = bodies[next_index]
                next_index += 1
                started = time.perf_counter()
                await post(client, url, one)
                spent.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, spent
