"""The change feed (``dicom_change_feed``, migration 0006): its writes, made by the index agent in
the transaction that changes the index rows, and its reads (``GET .../changefeed``).

Sequences are taken under a per-tenant advisory lock held until commit, and taken last in the
transaction: within a tenant, a sequence commits after every smaller one, so a reader that has
seen sequence N never has an N-1 appear later (without the lock, two index transactions on
different partitions could commit out of order and a follower would skip one). The lock is held
only for the insert and the commit. Each write notifies ``CHANNEL`` with the tenant: delivered at
commit, when the entries are there to be read.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

CHANNEL = "pacsflow_change_feed"
CREATE, UPDATE, DELETE = "create", "update", "delete"
CURRENT, REPLACED, DELETED = "current", "replaced", "deleted"

Key = tuple[str, str, str, str]
"""tenant, study, series, SOP instance UID."""

_EXISTING = """
SELECT k.n FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    WITH ORDINALITY AS k(tenant_id, study_uid, series_uid, sop_uid, n)
WHERE EXISTS (
    SELECT 1 FROM dicom_instance_meta i
    WHERE i.tenant_id = k.tenant_id AND i.study_uid = k.study_uid AND i.series_uid = k.series_uid
      AND i.sop_uid = k.sop_uid
)
"""
# Channel and lock names are literals here: ruff's S608 rightly objects to built statements.
_LOCK_AND_NOTIFY = """
SELECT pg_advisory_xact_lock(hashtextextended('pacsflow_change_feed/' || t, 0)),
       pg_notify('pacsflow_change_feed', t)
FROM unnest($1::text[]) AS t
"""
# An instance's earlier entries in states $6 take state $5. They are found by one index probe per
# instance and updated by their row addresses: joined as a plain UPDATE ... FROM, the planner
# hashes the whole feed while it is small by its measure (at 12,000 entries: 25 ms a batch).
# OFFSET 0 keeps the lateral subquery from being flattened into such a join.
_CHANGE_EARLIER = """
UPDATE dicom_change_feed SET state = $5
WHERE ctid = ANY(ARRAY(
    SELECT e.ctid
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS k(tenant_id, study_uid, series_uid, sop_uid)
    CROSS JOIN LATERAL (
        SELECT f.ctid FROM dicom_change_feed f
        WHERE f.tenant_id = k.tenant_id AND f.study_uid = k.study_uid AND f.series_uid = k.series_uid
          AND f.sop_uid = k.sop_uid AND f.state = ANY($6::text[])
        OFFSET 0
    ) e
))
"""
# Identity values are taken as rows reach the insert: in the batch's order.
_APPEND = """
INSERT INTO dicom_change_feed (tenant_id, study_uid, series_uid, sop_uid, action, state)
SELECT tenant_id, study_uid, series_uid, sop_uid, action, state
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
    WITH ORDINALITY AS k(tenant_id, study_uid, series_uid, sop_uid, action, state, n)
ORDER BY n
"""


def _columns(keys: Sequence[Key]) -> list[list[str]]:
    return [[key[i] for key in keys] for i in range(4)]


async def existing(conn: asyncpg.Connection, keys: Sequence[Key]) -> set[Key]:
    """Which of ``keys`` the index holds now: read before a batch's upsert, whose entries are
    ``update`` for those and ``create`` for the others."""
    rows = await conn.fetch(_EXISTING, *_columns(keys))
    return {keys[r["n"] - 1] for r in rows}


def store_changes(keys: Sequence[Key], existed: Collection[Key]) -> list[tuple[str, str]]:
    """(action, state) of each stored instance of a batch, in its order: ``update`` when the index
    had it or an earlier store of the batch wrote it; ``replaced`` when a later one of the batch
    rewrites it."""
    last = {key: n for n, key in enumerate(keys)}
    seen = set(existed)
    changes = []
    for n, key in enumerate(keys):
        changes.append((UPDATE if key in seen else CREATE, CURRENT if last[key] == n else REPLACED))
        seen.add(key)
    return changes


async def record_stores(conn: asyncpg.Connection, keys: Sequence[Key], existed: Collection[Key]) -> None:
    """The entries of a batch of stores: last in its transaction (see the module's docstring).
    Only instances the index had can have a current entry to replace: a batch of new ones (the
    usual batch) looks for none."""
    if keys:
        changes = store_changes(keys, existed)
        actions, states = [a for a, _ in changes], [s for _, s in changes]
        replaced = [key for key in dict.fromkeys(keys) if key in existed]
        await _write(conn, keys, actions, states, earlier=(replaced, REPLACED, [CURRENT]))


async def record_deletes(conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
    """A ``delete`` entry per instance whose row was removed; its earlier entries become deleted."""
    if keys:
        deleted = [DELETED] * len(keys)
        earlier = (keys, DELETED, [CURRENT, REPLACED])
        await _write(conn, keys, [DELETE] * len(keys), deleted, earlier=earlier)


async def _write(
    conn: asyncpg.Connection,
    keys: Sequence[Key],
    actions: list[str],
    states: list[str],
    *,
    earlier: tuple[Sequence[Key], str, list[str]],
) -> None:
    """Append the entries of ``keys``; first, the earlier entries of the instances ``earlier[0]``
    that are in states ``earlier[2]`` take state ``earlier[1]``."""
    instances, new_state, old_states = earlier
    if instances:
        # Before the lock is taken: only this study's partition writes these entries.
        await conn.execute(_CHANGE_EARLIER, *_columns(instances), new_state, old_states)
    # Tenants locked in one order: two transactions of the same tenants never wait on each other
    # the wrong way round.
    await conn.execute(_LOCK_AND_NOTIFY, sorted({key[0] for key in keys}))
    await conn.execute(_APPEND, *_columns(keys), actions, states)


# Reads.


@dataclass(frozen=True)
class Entry:
    sequence: int
    study_uid: str
    series_uid: str
    sop_uid: str
    action: str
    state: str
    timestamp: datetime
    metadata: bytes | None
    """The instance's DICOM JSON fragment (``pipeline.metadata``), of current entries when asked."""


# Metadata only of current entries, when asked ($2).
_PAGE = """
SELECT f.sequence, f.study_uid, f.series_uid, f.sop_uid, f.action, f.state, f.timestamp,
       i.json_fragment AS metadata
FROM dicom_change_feed f
LEFT JOIN dicom_instance_meta i ON $2 AND f.state = 'current'
    AND i.tenant_id = f.tenant_id AND i.study_uid = f.study_uid AND i.series_uid = f.series_uid
    AND i.sop_uid = f.sop_uid
WHERE f.tenant_id = $1 AND f.sequence > $3
  AND ($4::timestamptz IS NULL OR f.timestamp >= $4) AND ($5::timestamptz IS NULL OR f.timestamp < $5)
ORDER BY f.sequence LIMIT $6
"""
_LATEST = """
SELECT f.sequence, f.study_uid, f.series_uid, f.sop_uid, f.action, f.state, f.timestamp,
       i.json_fragment AS metadata
FROM dicom_change_feed f
LEFT JOIN dicom_instance_meta i ON $2 AND f.state = 'current'
    AND i.tenant_id = f.tenant_id AND i.study_uid = f.study_uid AND i.series_uid = f.series_uid
    AND i.sop_uid = f.sop_uid
WHERE f.tenant_id = $1
ORDER BY f.sequence DESC LIMIT 1
"""


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(**dict(row))


async def entries(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    *,
    after: int,
    limit: int,
    start: datetime | None = None,
    end: datetime | None = None,
    metadata: bool = True,
) -> list[Entry]:
    """The tenant's entries with a sequence above ``after`` (and a timestamp in [start, end)), in
    sequence order, at most ``limit``."""
    rows = await conn.fetch(_PAGE, tenant, metadata, after, start, end, limit)
    return [_entry(r) for r in rows]


async def latest(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, *, metadata: bool = True
) -> Entry | None:
    row = await conn.fetchrow(_LATEST, tenant, metadata)
    return _entry(row) if row is not None else None
