"""Regenerating a study's metadata files: its stale series' ``.json`` and the study's ``.json``.

The study is the unit: when several of its series change in one window, its study file is
written once. A session advisory lock per study serialises regenerations across workers (a
rebalance can leave two of them closing windows of one study), and the snapshot is read after
the lock is held, so the files on disk always match the versions recorded last.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
from pydicom import dcmread

from pipeline import metadata
from pipeline.cache import Cache
from pipeline.errors import StorageError
from pipeline.models import TenantId, Uid
from pipeline.stores import json_meta
from pipeline.stores.files import StorageLayout, write_atomic
from pipeline.stores.postgres import TRANSIENT_ERRORS

_LOCK = "SELECT pg_advisory_lock(hashtextextended($1, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended($1, 0))"


@dataclass(frozen=True)
class Regenerated:
    tenant: str
    study: str
    series: tuple[str, ...]
    """Series whose ``.json`` was rewritten (the study's ``.json`` was too, when any was)."""
    instances: int
    """Instances in the study file."""
    study_bytes: int
    study_gzip_bytes: int
    series_bytes: dict[str, int]
    series_gzip_bytes: dict[str, int]
    read_ms: float
    build_ms: float
    write_ms: float


def write_metadata(path: Path, body: bytes) -> tuple[int, int]:
    """Write ``path`` and ``path.gz`` atomically and durably; return both sizes."""
    packed = metadata.compressed(body)
    write_atomic(path.with_name(path.name + ".gz"), [packed])
    write_atomic(path, [body])
    return len(body), len(packed)


_STAMP_FILE = ".versions.json"
_LOCK_FILE = ".lock"


@contextlib.contextmanager
def _stamps(folder: Path) -> Iterator[dict[str, dict[str, int]]]:
    """The study folder's ``.versions.json`` under its file lock, written back on the way out."""
    fd = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            stamps: dict[str, dict[str, int]] = orjson.loads((folder / _STAMP_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            stamps = {}
        yield stamps
        write_atomic(folder / _STAMP_FILE, [orjson.dumps(stamps)])
    finally:
        os.close(fd)  # releases the lock


def write_fenced(
    folder: Path, files: Sequence[tuple[Path, bytes, Mapping[str, int]]]
) -> list[tuple[int, int]]:
    """Write each ``(path, body, versions)`` unless a newer regeneration already wrote that file.

    The advisory lock in PostgreSQL keeps regenerations of a study apart, but a worker whose
    database session dropped mid-write no longer holds it while its thread still writes. Here,
    under a file lock in the study's metadata folder, ``.versions.json`` records the series
    versions each file was built from; a file is not replaced by one built from older versions.
    Sizes are (0, 0) for a file left alone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    with _stamps(folder) as stamps:
        for path, body, versions in files:
            on_disk = stamps.get(path.name, {})
            if any(on_disk.get(series, 0) > version for series, version in versions.items()):
                sizes.append((0, 0))
                continue
            sizes.append(write_metadata(path, body))
            stamps[path.name] = dict(versions)
    return sizes


@contextlib.asynccontextmanager
async def study_lock(conn: asyncpg.Connection, tenant: str, study: str) -> AsyncIterator[None]:
    """Hold the study's metadata lock: regenerations and deletions of a study take turns."""
    lock = f"metadata/{tenant}/{study}"
    await conn.execute(_LOCK, lock)
    try:
        yield
    finally:
        # A broken connection has released the lock with the session.
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await conn.execute(_UNLOCK, lock)


def forget(layout: StorageLayout, tenant: TenantId, study: Uid, alive: Iterable[str]) -> None:
    """Remove the metadata files of the study's series that are no longer in the index (all of
    them, and the study's, when ``alive`` is empty) with their version stamps: a series stored
    again after its deletion starts again at version 1, and an old stamp would keep its new file
    from being written. Idempotent: a redelivered deletion finds nothing left to remove."""
    study_path = layout.study_metadata_path(tenant, study)
    folder = study_path.parent / study
    alive = set(alive)
    if not alive:
        for path in (study_path, study_path.with_name(study_path.name + ".gz")):
            path.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return
    if not folder.is_dir():
        return
    with _stamps(folder) as stamps:
        on_disk = {p.name.split(".json")[0] for p in folder.glob("*.json*") if not p.name.startswith(".")}
        for uid in sorted(on_disk - alive):
            path = folder / f"{uid}.json"
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".gz").unlink(missing_ok=True)
            stamps.pop(path.name, None)
        for versions in stamps.values():
            for uid in set(versions) - alive:
                versions.pop(uid)


class MetadataBuilder:
    """Builds metadata the one way (``metadata.join_fragments`` of the index's fragments): on
    demand for the web server, and into files when a window closes."""

    def __init__(self, layout: StorageLayout, public_base: str, default_tenant: TenantId, threshold: int):
        self._layout = layout
        self._public_base = public_base
        self._default_tenant = default_tenant
        self._threshold = threshold

    def root(self, tenant: TenantId) -> str:
        return metadata.dicomweb_root(self._public_base, tenant, self._default_tenant)

    async def regenerate(
        self, conn: asyncpg.Connection, tenant: TenantId, study: Uid, cache: Cache | None = None
    ) -> Regenerated | None:
        """Bring the study's metadata files up to date; None when they already were."""
        async with study_lock(conn, tenant, study):
            result = await self._study_locked(conn, tenant, study)
        if result is not None and cache is not None:
            await cache.invalidate_metadata(tenant, study, result.series)
        return result

    async def _study_locked(
        self, conn: asyncpg.Connection, tenant: TenantId, study: Uid
    ) -> Regenerated | None:
        started = time.perf_counter()
        snapshot = await json_meta.read_study(conn, tenant, study)
        stale = [s.series_uid for s in snapshot.series if not s.series_current]
        if not stale and all(s.in_study_file for s in snapshot.series):
            return None
        read = time.perf_counter()
        fragments = await asyncio.to_thread(self.fragments, tenant, snapshot.fragments)
        by_series: dict[str, list[bytes]] = defaultdict(list)
        for item, body in zip(snapshot.fragments, fragments, strict=True):
            by_series[item.series_uid].append(body)
        root = self.root(tenant)
        layout = self._layout
        versions = {s.series_uid: s.version for s in snapshot.series}
        files = [
            (
                layout.series_metadata_path(tenant, study, Uid(s)),
                metadata.join_fragments(by_series[s], root),
                {s: versions[s]},
            )
            for s in stale
        ]
        study_path = layout.study_metadata_path(tenant, study)
        files.append((study_path, metadata.join_fragments(fragments, root), versions))
        folder = study_path.parent / study
        built = time.perf_counter()
        writing = asyncio.ensure_future(asyncio.to_thread(write_fenced, folder, files))
        try:
            sizes = await asyncio.shield(writing)
        except asyncio.CancelledError:
            # A thread cannot be stopped: let it finish while the study's lock is still held, or
            # another worker could write newer files that this thread then overwrites.
            await writing
            raise
        written = time.perf_counter()
        await json_meta.mark_built(conn, tenant, study, versions, stale)
        return Regenerated(
            tenant=tenant,
            study=study,
            series=tuple(stale),
            instances=len(fragments),
            study_bytes=sizes[-1][0],
            study_gzip_bytes=sizes[-1][1],
            series_bytes={s: size[0] for s, size in zip(stale, sizes, strict=False)},
            series_gzip_bytes={s: size[1] for s, size in zip(stale, sizes, strict=False)},
            read_ms=round((read - started) * 1000, 1),
            build_ms=round((built - read) * 1000, 1),
            write_ms=round((written - built) * 1000, 1),
        )

    async def series(
        self, conn: asyncpg.Connection, tenant: TenantId, study: Uid, series: Uid, root: str | None = None
    ) -> tuple[int, bytes] | None:
        """The series' metadata built now from the index, as the web server answers while the file
        is not current (or the client reaches us by another ``root``): the version it was built
        from and the body; None for an unknown series."""
        snapshot = await json_meta.read_series(conn, tenant, study, series)
        if snapshot is None:
            return None
        fragments = await asyncio.to_thread(self.fragments, tenant, snapshot.fragments)
        return snapshot.version.version, metadata.join_fragments(fragments, root or self.root(tenant))

    async def study(
        self, conn: asyncpg.Connection, tenant: TenantId, study: Uid, root: str | None = None
    ) -> bytes | None:
        """The study's metadata built now from the index; None for an unknown study."""
        snapshot = await json_meta.read_study(conn, tenant, study)
        if not snapshot.series:
            return None
        fragments = await asyncio.to_thread(self.fragments, tenant, snapshot.fragments)
        return metadata.join_fragments(fragments, root or self.root(tenant))

    async def instance(
        self,
        conn: asyncpg.Connection,
        tenant: TenantId,
        study: Uid,
        series: Uid,
        sop: Uid,
        root: str | None = None,
    ) -> bytes | None:
        """One instance's metadata (a one-element array); None for an unknown instance."""
        found = await json_meta.read_instance(conn, tenant, study, series, sop)
        if found is None:
            return None
        fragments = await asyncio.to_thread(self.fragments, tenant, [found])
        return metadata.join_fragments(fragments, root or self.root(tenant))

    def fragments(self, tenant: TenantId, fragments: Sequence[json_meta.Fragment]) -> list[bytes]:
        """Every fragment's bytes; one indexed before fragments existed is built from its file."""
        return [item.body if item.body is not None else self._from_file(tenant, item) for item in fragments]

    def _from_file(self, tenant: TenantId, item: json_meta.Fragment) -> bytes:
        path = self._layout.root / item.file_path
        try:
            ds = dcmread(path, defer_size=metadata.deferred_size(self._threshold))
        except OSError as exc:  # not the database's kind of OSError: retrying will not help soon
            raise StorageError(f"cannot read {path} to build its metadata: {exc.strerror or exc}") from exc
        return metadata.fragment(
            ds, Uid(str(ds.StudyInstanceUID)), Uid(item.series_uid), Uid(item.sop_uid), self._threshold
        )
