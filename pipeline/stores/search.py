"""QIDO-RS searches over the PostgreSQL index: what can be matched, how (PS3.4 C.2.2.2), and the SQL.

Matching is done on columns of the index, never on parsed files: a key that has no column cannot
be matched and says so (``InvalidQuery``) rather than being ignored. What an answer *returns* comes
from each hit's instance fragment (``pipeline.metadata``), so a returned value is exactly what the
metadata says. Results come in a total order (date, then UIDs), so pages never repeat or skip.

Statements are assembled from this module's own column names; values are always parameters.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any

import asyncpg

from pipeline.errors import PacsflowError
from pipeline.indexing import parse_da, parse_tm
from pipeline.models import TenantId, Uid


class InvalidQuery(PacsflowError):
    """A query key or value that cannot be searched by, with the reason."""


class Level(enum.IntEnum):
    PATIENT = 0
    """C-FIND's patient level (QIDO-RS has none): a patient is every series of one PatientID."""
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


class Match(enum.Enum):
    UID = "a UID or a list of UIDs (separated by \\ or ,)"
    DATE = "a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either side may be left out)"
    TIME = "a time HHMMSS[.FFFFFF] or a range of them"
    NAME = "a person name, with * and ? wildcards"
    TEXT = "a value, with * and ? wildcards"
    CODE = "a code, a list of codes (separated by \\ or ,), or a pattern with * and ?"
    NUMBER = "a whole number"
    MODALITIES = "a modality or a list of modalities (separated by \\ or ,)"


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: str
    """``ggggeeee``, as DICOM JSON names it."""
    level: Level
    match: Match | None
    """None: returned, never matched (computed, or not a column)."""
    column: str = ""


# Columns are ``s.`` (dicom_state_meta: one row per series, with its study and patient) or ``i.``
# (dicom_instance_meta).
_CATALOGUE = (
    Attribute("StudyInstanceUID", "0020000D", Level.STUDY, Match.UID, "s.study_uid"),
    Attribute("StudyDate", "00080020", Level.STUDY, Match.DATE, "s.study_date"),
    Attribute("StudyTime", "00080030", Level.STUDY, Match.TIME, "s.study_time"),
    Attribute("AccessionNumber", "00080050", Level.STUDY, Match.TEXT, "s.accession_number"),
    Attribute("ReferringPhysicianName", "00080090", Level.STUDY, Match.NAME, "s.referring_physician_name"),
    Attribute("PatientName", "00100010", Level.PATIENT, Match.NAME, "s.patient_name"),
    Attribute("PatientID", "00100020", Level.PATIENT, Match.TEXT, "s.patient_id"),
    Attribute("PatientBirthDate", "00100030", Level.PATIENT, Match.DATE, "s.patient_birth_date"),
    Attribute("PatientSex", "00100040", Level.PATIENT, Match.CODE, "s.patient_sex"),
    Attribute("NumberOfPatientRelatedStudies", "00201200", Level.PATIENT, None),
    Attribute("NumberOfPatientRelatedSeries", "00201202", Level.PATIENT, None),
    Attribute("NumberOfPatientRelatedInstances", "00201204", Level.PATIENT, None),
    Attribute("StudyID", "00200010", Level.STUDY, Match.TEXT, "s.study_id"),
    Attribute("StudyDescription", "00081030", Level.STUDY, Match.TEXT, "s.study_description"),
    Attribute("ModalitiesInStudy", "00080061", Level.STUDY, Match.MODALITIES, "s.modality"),
    Attribute("NumberOfStudyRelatedSeries", "00201206", Level.STUDY, None),
    Attribute("NumberOfStudyRelatedInstances", "00201208", Level.STUDY, None),
    Attribute("SeriesInstanceUID", "0020000E", Level.SERIES, Match.UID, "s.series_uid"),
    Attribute("Modality", "00080060", Level.SERIES, Match.CODE, "s.modality"),
    Attribute("SeriesNumber", "00200011", Level.SERIES, Match.NUMBER, "s.series_number"),
    Attribute("SeriesDate", "00080021", Level.SERIES, Match.DATE, "s.series_date"),
    Attribute("SeriesTime", "00080031", Level.SERIES, Match.TIME, "s.series_time"),
    Attribute("SeriesDescription", "0008103E", Level.SERIES, Match.TEXT, "s.series_description"),
    Attribute("BodyPartExamined", "00180015", Level.SERIES, Match.CODE, "s.body_part_examined"),
    Attribute("ProtocolName", "00181030", Level.SERIES, Match.TEXT, "s.protocol_name"),
    Attribute("NumberOfSeriesRelatedInstances", "00201209", Level.SERIES, None),
    Attribute("SOPInstanceUID", "00080018", Level.INSTANCE, Match.UID, "i.sop_uid"),
    Attribute("SOPClassUID", "00080016", Level.INSTANCE, Match.UID, "i.sop_class_uid"),
    Attribute("InstanceNumber", "00200013", Level.INSTANCE, Match.NUMBER, "i.instance_number"),
    Attribute("NumberOfFrames", "00280008", Level.INSTANCE, Match.NUMBER, "i.number_of_frames"),
    Attribute("Rows", "00280010", Level.INSTANCE, Match.NUMBER, "i.rows"),
    Attribute("Columns", "00280011", Level.INSTANCE, Match.NUMBER, "i.columns"),
)
BY_KEYWORD = {a.keyword: a for a in _CATALOGUE}
BY_TAG = {a.tag: a for a in _CATALOGUE}


@dataclass(frozen=True)
class Condition:
    attribute: Attribute
    value: str


@dataclass(frozen=True)
class Search:
    level: Level
    tenant: TenantId
    study: str | None = None
    """The study the route names (``/studies/{study}/...``), if any."""
    series: str | None = None
    conditions: Sequence[Condition] = ()
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class Hit:
    study_uid: str
    series_uid: str | None
    sop_uid: str | None
    fragment: bytes | None
    """A representative instance's DICOM JSON: the values returned come from it."""
    series_count: int | None = None
    instance_count: int | None = None
    modalities: tuple[str, ...] = ()
    study_count: int | None = None
    """Patient level: the patient's studies (``study_uid`` is its newest, whose fragment is returned)."""


@dataclass
class _Where:
    """Conditions and their parameters, numbered as they are added (``$1`` is the tenant)."""

    params: list[object]
    state: list[str] = field(default_factory=list)
    instance: list[str] = field(default_factory=list)
    having: list[str] = field(default_factory=list)

    def param(self, value: object) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def add(self, column: str, sql: str) -> None:
        """``sql`` goes with the table of ``column`` (``s.x`` or ``i.x``): only ``s.`` conditions
        make an instance search join the series rows."""
        table, dot, name = column.partition(".")
        if not (dot and name and table in ("s", "i")):  # a bug here, not a bad query: no 400
            raise TypeError(f"{column!r} is not a column of the index (s.<name> or i.<name>)")
        (self.instance if table == "i" else self.state).append(sql)


_WHOLE = re.compile(r"[+-]?[0-9]{1,12}")  # IS: at most 12 characters


def _split(value: str) -> list[str]:
    # Spaces around the items of a list are layout; any other character is part of an item.
    return [v.strip(" ") for v in re.split(r"[\\,]", value) if v.strip(" ")]


def _like(value: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (``\\`` is LIKE's escape)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def has_wildcard(value: str) -> bool:
    """Whether ``value`` holds a DICOM wildcard (``*`` or ``?``, PS3.4 C.2.2.2.4)."""
    return "*" in value or "?" in value


def _range(value: str, parse: Callable[[str], Any], what: str) -> tuple[Any, Any]:
    low, dash, high = value.partition("-")
    bounds: list[Any] = []
    for text in (low, high) if dash else (low,):
        text = text.strip()
        if not text:
            bounds.append(None)
            continue
        parsed = parse(text)
        if parsed is None:
            raise ValueError(f"{text!r} is not {what}")
        bounds.append(parsed)
    if not dash:
        return bounds[0], bounds[0]
    if bounds[0] is None and bounds[1] is None:
        raise ValueError("a range needs at least one end")
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise ValueError(f"the range starts after it ends ({low} > {high})")
    return bounds[0], bounds[1]


def _strict_da(text: str) -> date | None:
    return parse_da(text) if len(text) == 8 else None


def _strict_tm(text: str) -> time | None:
    return parse_tm(text) if ":" not in text else None


def _fuzzy_regex(value: str) -> str:
    """Each ``^``-separated component of the query is a prefix of the name's same component; a
    one-component query is a prefix of any component (a family or a given name)."""

    def component(text: str) -> str:
        return re.escape(text.lower()).replace(r"\*", "[^^=]*").replace(r"\?", "[^^=]")

    parts = value.split("^")
    if len(parts) == 1:
        return rf"(^|[\^ =]){component(parts[0])}"
    return "^" + r"[^^=]*\^".join(component(p) for p in parts)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _condition(where: _Where, attribute: Attribute, column: str, value: str, fuzzy: bool) -> None:
    match = attribute.match
    if match is Match.UID:
        # As Uid has them: its checks refuse any control character, and padding is stripped.
        uids = [str(Uid(uid, attribute.keyword)) for uid in _split(value)]
        where.add(column, f"{column} = ANY({where.param(uids)}::text[])")
        return
    # No stored value holds one, and PostgreSQL refuses a NUL in text outright.
    if control := _CONTROL.search(value):
        raise ValueError(f"{control.group()!r} is a control character, which no value holds")
    if match is Match.MODALITIES:
        codes = _split(value)
        if any(has_wildcard(c) for c in codes):
            raise ValueError("wildcards are not supported here, list the modalities")
        where.having.append(f"bool_or({column} = ANY({where.param(codes)}::text[]))")
    elif match is Match.CODE:
        codes = _split(value)
        if len(codes) > 1:
            where.add(column, f"{column} = ANY({where.param(codes)}::text[])")
        elif has_wildcard(value):
            where.add(column, f"{column} LIKE {where.param(_like(value))}")
        else:
            where.add(column, f"{column} = {where.param(value)}")
    elif match is Match.TEXT:
        if has_wildcard(value):
            where.add(column, f"{column} LIKE {where.param(_like(value))}")
        else:
            where.add(column, f"{column} = {where.param(value)}")
    elif match is Match.NAME:
        if fuzzy:
            where.add(column, f"lower({column}) ~ {where.param(_fuzzy_regex(value))}")
        else:
            # A name with ideographic or phonetic groups (``Yamada^Tarou=山田^太郎``) matches by
            # its first group too.
            pattern = where.param(_like(value.lower()))
            where.add(column, f"(lower({column}) LIKE {pattern} OR lower({column}) LIKE {pattern} || '=%')")
    elif match in (Match.DATE, Match.TIME):
        parse = _strict_da if match is Match.DATE else _strict_tm
        low, high = _range(value, parse, match.value)
        if low is not None and low == high:
            where.add(column, f"{column} = {where.param(low)}")
        else:
            if low is not None:
                where.add(column, f"{column} >= {where.param(low)}")
            if high is not None:
                where.add(column, f"{column} <= {where.param(high)}")
    elif match is Match.NUMBER:
        # Not int() alone: it takes non-ASCII digits, "1_000" and a trailing newline as well.
        if not _WHOLE.fullmatch(value.strip(" ")):
            raise ValueError(f"{value!r} is not {match.value}")
        number = int(value)
        if not -(2**31) <= number < 2**31:
            raise ValueError(f"{value} is out of range")
        where.add(column, f"{column} = {where.param(number)}")
    else:
        raise InvalidQuery(f"{attribute.keyword} ({attribute.tag}) is returned but cannot be matched")


def _where(search: Search) -> _Where:
    where = _Where([search.tenant])
    # An instance search is scoped by the instance rows' own UIDs: no join for them.
    alias = "i" if search.level is Level.INSTANCE else "s"
    if search.study is not None:
        where.add(f"{alias}.study_uid", f"{alias}.study_uid = {where.param(search.study)}")
    if search.series is not None:
        where.add(f"{alias}.series_uid", f"{alias}.series_uid = {where.param(search.series)}")
    for condition in search.conditions:
        attribute = condition.attribute
        if attribute.level > search.level:
            raise InvalidQuery(
                f"{attribute.keyword} ({attribute.tag}) is a {attribute.level.name.lower()}-level "
                f"attribute: it cannot be matched in a {search.level.name.lower()}-level search"
            )
        value = condition.value
        if value == "" or value == "*":
            continue  # universal matching: returned, not filtered
        try:
            column = attribute.column
            if attribute.match is Match.UID and alias == "i":
                column = column.replace("s.", "i.", 1)
            _condition(where, attribute, column, value, search.fuzzy)
        except (ValueError, PacsflowError) as exc:
            if isinstance(exc, InvalidQuery):
                raise
            expected = attribute.match.value if attribute.match else ""
            raise InvalidQuery(f"{attribute.keyword}={value!r}: {exc} (expected {expected})") from None
    return where


_STUDY_ORDER = "study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid"
_ROW_ORDER = "s.study_date DESC NULLS LAST, s.study_time DESC NULLS LAST, s.study_uid"
# What a window of hits is multiplied by when a study listed twice in it left too few studies
# (``_window_short``); after the last, every hit is read.
_WINDOW_FACTORS = (1, 4, 16)


def _studies(search: Search, where: _Where, window: int | None = 1) -> str:
    """A study ranks by its newest matching series (StudyDate, StudyTime, then its UID): the
    order of ``dicom_state_study_order``, which PostgreSQL walks from the top and leaves once it
    has ``window`` pages' worth of (study, date, time) groups, however many studies match. A study
    whose series disagree on its date is several groups, ranked by its first; the query also says
    how many groups and studies its window held, so that ``search`` can widen a window that such
    a study left short. ``window`` None: every hit (exact whatever the data, and as slow as the
    number of hits). The walk needs PostgreSQL 17 or later, which orders GROUP BY keys as the
    index does; an older server gives the same answers at the cost of reading every hit."""
    if where.having:
        return _studies_grouped(search, where)
    state = " AND ".join(["s.tenant_id = $1", *where.state])
    limit, offset = where.param(search.limit + 1), where.param(search.offset)
    cut = f"LIMIT ({limit}::bigint + {offset}::bigint) * {window}" if window is not None else ""
    return f"""
        WITH hits AS (
            SELECT s.study_uid, row_number() OVER (ORDER BY {_ROW_ORDER}) AS rank
            FROM dicom_state_meta s WHERE {state} GROUP BY s.study_uid, s.study_date, s.study_time
            ORDER BY {_ROW_ORDER} {cut}
        ), page AS (
            SELECT s.study_uid, h.rank, count(*)::int AS series_count,
                   sum(s.series_related_instances)::int AS instance_count,
                   array_agg(DISTINCT s.modality ORDER BY s.modality)
                       FILTER (WHERE s.modality <> '') AS modalities
            FROM dicom_state_meta s
            JOIN (SELECT study_uid, min(rank) AS rank FROM hits GROUP BY study_uid) h USING (study_uid)
            WHERE s.tenant_id = $1 GROUP BY s.study_uid, h.rank
            ORDER BY h.rank
            LIMIT {limit} OFFSET {offset}
        )
        SELECT page.*, (
            SELECT i.json_fragment FROM dicom_instance_meta i
            WHERE i.tenant_id = $1 AND i.study_uid = page.study_uid
            ORDER BY i.series_uid, i.sop_uid LIMIT 1
        ) AS fragment, held.groups AS window_groups, held.studies AS window_studies
        FROM (SELECT count(*)::int AS groups, count(DISTINCT study_uid)::int AS studies FROM hits) held
        LEFT JOIN page ON true
        ORDER BY page.rank
        """


def _studies_grouped(search: Search, where: _Where) -> str:
    """ModalitiesInStudy is a condition on a study's series together (HAVING): every hit is
    grouped before any is ranked, by its newest series."""
    state = " AND ".join(["s.tenant_id = $1", *where.state])
    limit, offset = where.param(search.limit + 1), where.param(search.offset)
    return f"""
        WITH hits AS (
            SELECT s.study_uid FROM dicom_state_meta s WHERE {state} GROUP BY s.study_uid
            HAVING {" AND ".join(where.having)}
        ), page AS (
            SELECT s.study_uid, max(s.study_date) AS study_date, max(s.study_time) AS study_time,
                   count(*)::int AS series_count, sum(s.series_related_instances)::int AS instance_count,
                   array_agg(DISTINCT s.modality ORDER BY s.modality)
                       FILTER (WHERE s.modality <> '') AS modalities
            FROM dicom_state_meta s JOIN hits USING (study_uid)
            WHERE s.tenant_id = $1
            GROUP BY s.study_uid
            ORDER BY {_STUDY_ORDER}
            LIMIT {limit} OFFSET {offset}
        )
        SELECT page.*, (
            SELECT i.json_fragment FROM dicom_instance_meta i
            WHERE i.tenant_id = $1 AND i.study_uid = page.study_uid
            ORDER BY i.series_uid, i.sop_uid LIMIT 1
        ) AS fragment
        FROM page ORDER BY {_STUDY_ORDER}
        """


def _patients(search: Search, where: _Where) -> str:
    """Patients by PatientID, each with its counts over all its series (not only those matching),
    represented by its newest study's fragment. Studies without a PatientID (stored as '') belong
    to no patient: they are not merged into one that does not exist."""
    if search.study is not None or search.series is not None:
        raise InvalidQuery("a patient-level search cannot be scoped by a study or a series")
    # Only patient-level keys reach here (``_where``): no study-level HAVING.
    state = " AND ".join(["s.tenant_id = $1", *where.state])
    limit, offset = where.param(search.limit + 1), where.param(search.offset)
    return f"""
        WITH hits AS (
            SELECT DISTINCT s.patient_id FROM dicom_state_meta s WHERE {state} AND s.patient_id <> ''
        ), page AS (
            SELECT s.patient_id, count(DISTINCT s.study_uid)::int AS study_count,
                   count(*)::int AS series_count, sum(s.series_related_instances)::int AS instance_count,
                   (array_agg(s.study_uid ORDER BY {_ROW_ORDER}))[1] AS study_uid
            FROM dicom_state_meta s JOIN hits USING (patient_id)
            WHERE s.tenant_id = $1
            GROUP BY s.patient_id
            ORDER BY s.patient_id
            LIMIT {limit} OFFSET {offset}
        )
        SELECT page.*, (
            SELECT i.json_fragment FROM dicom_instance_meta i
            WHERE i.tenant_id = $1 AND i.study_uid = page.study_uid
            ORDER BY i.series_uid, i.sop_uid LIMIT 1
        ) AS fragment
        FROM page ORDER BY page.patient_id
        """


def _series(search: Search, where: _Where) -> str:
    conditions = ["s.tenant_id = $1", *where.state]
    if where.having:  # ModalitiesInStudy: the series of studies holding one of them
        conditions.append(
            f"s.study_uid IN (SELECT s.study_uid FROM dicom_state_meta s WHERE s.tenant_id = $1 "
            f"GROUP BY s.study_uid HAVING {' AND '.join(where.having)})"
        )
    limit, offset = where.param(search.limit + 1), where.param(search.offset)
    return f"""
        SELECT s.study_uid, s.series_uid, s.series_related_instances AS instance_count, (
            SELECT i.json_fragment FROM dicom_instance_meta i
            WHERE i.tenant_id = s.tenant_id AND i.study_uid = s.study_uid AND i.series_uid = s.series_uid
            ORDER BY i.sop_uid LIMIT 1
        ) AS fragment
        FROM dicom_state_meta s
        WHERE {" AND ".join(conditions)}
        ORDER BY s.study_date DESC NULLS LAST, s.study_uid, s.series_number NULLS LAST, s.series_uid
        LIMIT {limit} OFFSET {offset}
        """


def _instances(search: Search, where: _Where, uids_only: bool = False) -> str:
    conditions = ["i.tenant_id = $1", *where.instance]
    join = ""
    if where.state or where.having:
        join = (
            "JOIN dicom_state_meta s ON s.tenant_id = i.tenant_id AND s.study_uid = i.study_uid "
            "AND s.series_uid = i.series_uid"
        )
        conditions += where.state
    if where.having:
        conditions.append(
            f"i.study_uid IN (SELECT s.study_uid FROM dicom_state_meta s WHERE s.tenant_id = $1 "
            f"GROUP BY s.study_uid HAVING {' AND '.join(where.having)})"
        )
    limit, offset = where.param(search.limit + 1), where.param(search.offset)
    return f"""
        SELECT i.study_uid, i.series_uid, i.sop_uid{"" if uids_only else ", i.json_fragment AS fragment"}
        FROM dicom_instance_meta i {join}
        WHERE {" AND ".join(conditions)}
        ORDER BY i.study_uid, i.series_uid, i.instance_number NULLS LAST, i.sop_uid
        LIMIT {limit} OFFSET {offset}
        """


def statement(query: Search, window: int | None = 1, *, uids_only: bool = False) -> tuple[str, list[object]]:
    """The SQL of one page of ``query`` (one row more than the limit: whether more follow) and its
    parameters. Pure: raises ``InvalidQuery`` before anything reaches the database. ``window``:
    see ``_studies``. ``uids_only``: an instance-level search's UIDs, without the fragments."""
    where = _where(query)
    if uids_only:
        if query.level is not Level.INSTANCE:
            raise ValueError("only an instance-level search selects UIDs only")
        return _instances(query, where, uids_only=True), where.params
    if query.level is Level.STUDY:
        return _studies(query, where, window), where.params
    if query.level is Level.PATIENT:
        return _patients(query, where), where.params
    build = {Level.SERIES: _series, Level.INSTANCE: _instances}[query.level]
    return build(query, where), where.params


def _window_short(rows: Sequence[asyncpg.Record], query: Search, window: int | None) -> bool:
    """Whether a study search's window was full yet held fewer studies than the page needs (a
    study in it listed twice): a study ranked after the window might belong on the page."""
    if window is None or not rows or rows[0].get("window_groups") is None:
        return False  # every hit was read, or not a windowed search
    needed = query.limit + 1 + query.offset
    full = bool(rows[0]["window_groups"] >= needed * window)
    return full and bool(rows[0]["window_studies"] < needed)


def _hit(row: asyncpg.Record) -> Hit:
    # Each level's statement selects the columns of its own hits; the others are absent.
    return Hit(
        row["study_uid"],
        row.get("series_uid"),
        row.get("sop_uid"),
        row["fragment"],
        row.get("series_count"),
        row.get("instance_count"),
        tuple(row.get("modalities") or ()),
        row.get("study_count"),
    )


async def search(conn: asyncpg.Connection, query: Search) -> tuple[list[Hit], bool]:
    """The hits of one page, and whether more follow it."""
    for factor in (*_WINDOW_FACTORS, None):
        sql, params = statement(query, factor)
        rows = await conn.fetch(sql, *params)
        if not _window_short(rows, query, factor):
            break
    hits = [_hit(row) for row in rows if row["study_uid"] is not None]  # None: an empty page
    return hits[: query.limit], len(hits) > query.limit


async def instance_uids(conn: asyncpg.Connection, query: Search) -> tuple[list[tuple[str, str, str]], bool]:
    """The (study, series, SOP instance) UIDs an instance-level ``query``'s page names, and whether
    more follow: its hits without their fragments, for what only needs to know which instances."""
    sql, params = statement(query, uids_only=True)
    rows = await conn.fetch(sql, *params)
    uids = [(row["study_uid"], row["series_uid"], row["sop_uid"]) for row in rows]
    return uids[: query.limit], len(uids) > query.limit
