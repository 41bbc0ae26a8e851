"""Store acknowledged -> visible, instance by instance, as a client sees it.

Instances are sent one at a time, with a pause after each acknowledgement (jittered, so that
sends do not lock to the period of the metadata window), into one series. Meanwhile a poller asks,
every ``POLL_S``, QIDO-RS for each instance not yet found
(``/studies/{s}/series/{se}/instances?SOPInstanceUID=...``) and the series metadata for those not
yet in it. An instance's latency is from the moment its store was answered (the C-STORE response,
the STOW-RS answer) to the answer of the first poll that showed it: an upper bound, by at most
one poll period and one request."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.bench import stow
from tests.bench.read import pct

POLL_S = 0.02
BOUND_S = 120.0  # after the last acknowledgement: an instance never shown fails the bench
SOP_INSTANCE_UID = "00080018"


@dataclass
class Sent:
    sop: str
    acked: float
    in_qido: float | None = None
    in_metadata: float | None = None


@dataclass(frozen=True)
class Target:
    dicomweb: str
    study: str
    series: str

    @property
    def series_url(self) -> str:
        return f"{self.dicomweb}/studies/{self.study}/series/{self.series}"


async def _get(client: aiohttp.ClientSession, url: str) -> Any:
    """The JSON answer, or None while the server has nothing to show (204, 404)."""
    async with client.get(url, headers={"Accept": "application/dicom+json"}) as response:
        body = await response.read()
        if response.status in (204, 404):
            return None
        if response.status != 200:
            raise SystemExit(f"GET {url}: {response.status} {body[:300]!r}")
        return await response.json(content_type=None) if body else None


async def _follow(
    client: aiohttp.ClientSession, target: Target, sent: list[Sent], done: asyncio.Event
) -> None:
    deadline = float("inf")
    while True:
        waiting = [s for s in list(sent) if s.in_qido is None or s.in_metadata is None]
        if done.is_set():
            if not waiting:
                return
            deadline = min(deadline, time.perf_counter() + BOUND_S)
            if time.perf_counter() > deadline:
                raise SystemExit(
                    f"{len(waiting)} instances sent to {target.series_url} not visible {BOUND_S:.0f} s after "
                    f"the last store: {[s.sop for s in waiting[:3]]}"
                )
        for one in waiting:
            if one.in_qido is None:
                query = urllib.parse.urlencode({"SOPInstanceUID": one.sop})
                if await _get(client, f"{target.series_url}/instances?{query}"):
                    one.in_qido = time.perf_counter()
        if any(s.in_metadata is None for s in waiting):
            found = await _get(client, f"{target.series_url}/metadata") or []
            now = time.perf_counter()
            present = {uid for item in found for uid in item.get(SOP_INSTANCE_UID, {}).get("Value", [])}
            for one in waiting:
                if one.in_metadata is None and one.sop in present:
                    one.in_metadata = now
        await asyncio.sleep(POLL_S)


async def _measure(target: Target, send: Callable[[list[Sent]], Awaitable[None]]) -> list[Sent]:
    sent: list[Sent] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=60)
    ) as client:
        follower = asyncio.create_task(_follow(client, target, sent, done))
        try:
            await send(sent)
        except BaseException:
            follower.cancel()
            raise
        done.set()
        await follower
    return sent


def after_cstore(
    target: Target, dicom_port: int, datasets: Sequence[Dataset], pauses: Sequence[float]
) -> list[Sent]:
    """One association (a modality sending a series), one C-STORE at a time."""

    def send_all(sent: list[Sent]) -> None:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="ANY")
        if not assoc.is_established:
            raise SystemExit(f"the SCP on port {dicom_port} refused the association")
        try:
            for ds, pause in zip(datasets, pauses, strict=True):
                status = assoc.send_c_store(ds)
                acked = time.perf_counter()
                if not status or status.Status != 0:
                    raise SystemExit(f"C-STORE of {ds.SOPInstanceUID}: {status}")
                sent.append(Sent(str(ds.SOPInstanceUID), acked))
                time.sleep(pause)
        finally:
            assoc.release()

    async def send(sent: list[Sent]) -> None:
        # pynetdicom blocks: its own thread, while the poller keeps the event loop.
        await asyncio.to_thread(send_all, sent)

    return asyncio.run(_measure(target, send))


def after_stow(
    target: Target, bodies: Sequence[tuple[str, stow.Body]], pauses: Sequence[float]
) -> list[Sent]:
    """One instance per STOW-RS request, ``bodies`` as (SOP Instance UID, body)."""

    async def send(sent: list[Sent]) -> None:
        async with stow.session(1) as client:
            for (sop, one), pause in zip(bodies, pauses, strict=True):
                await stow.post(client, f"{target.dicomweb}/studies", one)
                sent.append(Sent(sop, time.perf_counter()))
                await asyncio.sleep(pause)

    return asyncio.run(_measure(target, send))


def summary(sent: Sequence[Sent]) -> dict[str, dict[str, float]]:
    """ms from acknowledged to visible: p50, p99 (below 100 instances, the slowest) and max."""
    out: dict[str, dict[str, float]] = {}
    for name, seen in (("qido", [s.in_qido for s in sent]), ("metadata", [s.in_metadata for s in sent])):
        spent = [(when - s.acked) * 1000 for when, s in zip(seen, sent, strict=True) if when is not None]
        out[name] = {"p50": pct(spent, 0.5), "p99": pct(spent, 0.99), "max": round(max(spent), 2)}
    return out
