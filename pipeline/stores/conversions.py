"""PostgreSQL reads and writes of conversions: the conversion columns of ``dicom_instance_meta``.

``conversion_status`` is NULL (no copy needed), 0 (pending), 1 (done: ``converted_syntax`` and
``converted_frame_index`` describe the copy) or 2 (failed: ``conversion_error``). An outcome is
recorded only where the row's ``trace_id`` is still the request's: a row a newer store replaced
(which reset these columns and asked anew) or a delete removed is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pipeline.indexing import CONVERSION_DONE, CONVERSION_FAILED, CONVERSION_PENDING
from pipeline.models import ConversionRequest

ERROR_MAX_CHARS = 2000
"""A codec's message can quote the data it choked on: the index keeps the start of it."""

_KEY = "tenant_id = $1 AND study_uid = $2 AND series_uid = $3 AND sop_uid = $4"
_STATE = f"SELECT trace_id, conversion_status FROM dicom_instance_meta WHERE {_KEY}"  # noqa: S608
_DONE = f"""
UPDATE dicom_instance_meta
SET conversion_status = {CONVERSION_DONE}, converted_syntax = $6, converted_frame_index = $7,
    conversion_error = NULL
WHERE {_KEY} AND trace_id = $5
"""  # noqa: S608  # constants of our own
_FAILED = f"""
UPDATE dicom_instance_meta
SET conversion_status = {CONVERSION_FAILED}, converted_syntax = NULL, converted_frame_index = NULL,
    conversion_error = $6
WHERE {_KEY} AND trace_id = $5
"""  # noqa: S608
_COUNTS = f"""
SELECT conversion_status, count(*)::int AS n FROM dicom_instance_meta
WHERE conversion_status IN ({CONVERSION_PENDING}, {CONVERSION_FAILED}) GROUP BY 1
"""  # noqa: S608


@dataclass(frozen=True)
class InstanceState:
    trace_id: str
    """The store the row describes now."""
    conversion_status: int | None


def _key(request: ConversionRequest) -> tuple[str, str, str, str]:
    return request.tenant_id, request.study_uid, request.series_uid, request.sop_uid


async def state(conn: asyncpg.Connection | asyncpg.Pool, request: ConversionRequest) -> InstanceState | None:
    """The requested instance's row as it is now; None when the index no longer has it."""
    row = await conn.fetchrow(_STATE, *_key(request))
    return None if row is None else InstanceState(row["trace_id"], row["conversion_status"])


async def record_converted(
    conn: asyncpg.Connection | asyncpg.Pool,
    request: ConversionRequest,
    syntax: str,
    frame_index: bytes | None,
) -> bool:
    """Mark the instance converted; False when its row is no longer the request's store."""
    done = await conn.execute(_DONE, *_key(request), request.trace_id, syntax, frame_index)
    return str(done) == "UPDATE 1"


async def record_failed(
    conn: asyncpg.Connection | asyncpg.Pool, request: ConversionRequest, error: str
) -> bool:
    """Mark the instance's conversion failed with ``error``; False when its row is no longer the
    request's store."""
    # PostgreSQL text refuses NUL, which a codec's message may quote.
    text = error.replace("\x00", "\\x00")[:ERROR_MAX_CHARS]
    done = await conn.execute(_FAILED, *_key(request), request.trace_id, text)
    return str(done) == "UPDATE 1"


async def counts(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Instances whose conversion is pending or failed, for ``pacsflow status``."""
    found = {row["conversion_status"]: row["n"] for row in await conn.fetch(_COUNTS)}
    return {"pending": found.get(CONVERSION_PENDING, 0), "failed": found.get(CONVERSION_FAILED, 0)}
