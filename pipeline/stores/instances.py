"""The index's answer to "which files make this study, series or instance": what WADO-RS retrieves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int | None
    file_path: str
    """Relative to the storage root."""
    frame_index: bytes | None
    """``pipeline.frames.frame_index``; None: frames are read by parsing the file."""
    converted_syntax: str | None = None
    """The transfer syntax of its converted copy (``pipeline.conversion``); None: it has none (yet)."""
    converted_frame_index: bytes | None = None
    """The frame index of its converted copy."""


# A converted copy counts only once its conversion is done (conversion_status 1): until then, or
# after a failure, the instance is read as stored.
_CONVERTED = {
    "converted_syntax": "CASE WHEN i.conversion_status = 1 THEN i.converted_syntax END",
    "converted_frame_index": "CASE WHEN i.conversion_status = 1 THEN i.converted_frame_index END",
}
_COLUMNS = ", ".join(
    f"{_CONVERTED[name]} AS {name}" if name in _CONVERTED else f"i.{name}"
    for name in StoredInstance.__dataclass_fields__
)


async def find(
    pool: asyncpg.Pool, tenant: str, study: str, series: str | None = None, sop: str | None = None
) -> list[StoredInstance]:
    """The instances of a study, or of one of its series, or one instance; in viewing order
    (series by number, instances by number)."""
    if series is not None and sop is not None:
        # One row by its primary key, in a statement of its own: the general one's `$3 IS NULL OR`
        # conditions keep PostgreSQL planning it anew on every frame request.
        one = await pool.fetch(
            f"SELECT {_COLUMNS} FROM dicom_instance_meta i WHERE i.tenant_id = $1"  # noqa: S608
            " AND i.study_uid = $2 AND i.series_uid = $3 AND i.sop_uid = $4",
            tenant,
            study,
            series,
            sop,
        )
        return [StoredInstance(**dict(row)) for row in one]
    rows = await pool.fetch(
        f"""
        SELECT {_COLUMNS}
        FROM dicom_instance_meta i
        LEFT JOIN dicom_state_meta s
          ON s.tenant_id = i.tenant_id AND s.study_uid = i.study_uid AND s.series_uid = i.series_uid
        WHERE i.tenant_id = $1 AND i.study_uid = $2
          AND ($3::text IS NULL OR i.series_uid = $3) AND ($4::text IS NULL OR i.sop_uid = $4)
        ORDER BY s.series_number NULLS LAST, i.series_uid, i.instance_number NULLS LAST, i.sop_uid
        """,  # noqa: S608  # our own column names
        tenant,
        study,
        series,
        sop,
    )
    return [StoredInstance(**dict(row)) for row in rows]


async def find_each(
    pool: asyncpg.Pool, tenant: str, uids: Sequence[tuple[str, str, str]]
) -> list[StoredInstance]:
    """The instances named by (study, series, SOP instance) UIDs, in that order; those the index no
    longer holds are left out."""
    if not uids:
        return []
    studies, series, sops = (list(column) for column in zip(*uids, strict=True))
    rows = await pool.fetch(
        f"""
        SELECT {_COLUMNS}, u.position
        FROM unnest($2::text[], $3::text[], $4::text[])
             WITH ORDINALITY AS u(study_uid, series_uid, sop_uid, position)
        JOIN dicom_instance_meta i
          ON i.tenant_id = $1 AND i.study_uid = u.study_uid AND i.series_uid = u.series_uid
         AND i.sop_uid = u.sop_uid
        ORDER BY u.position
        """,  # noqa: S608  # our own column names
        tenant,
        studies,
        series,
        sops,
    )
    return [StoredInstance(**{k: v for k, v in row.items() if k != "position"}) for row in rows]
