"""C-FIND (PS3.4 C.4.1) over the index: an identifier read as a QIDO-RS search, answers made from
the hits as QIDO-RS makes them.

One matcher: the identifier's keys become ``pipeline.stores.search`` conditions, whose value syntax
is DICOM's own (``*`` and ``?``, ``a-b`` ranges, ``\\``-separated lists). A key with a value the
index cannot match is refused by name (0xA900 and an ErrorComment), never ignored, as QIDO-RS
answers 400. Every key of the identifier comes back: its value from the hit's instance fragment
(DICOM JSON, UTF-8, hence ISO_IR 192) or from the counts of the index rows, empty when neither
has it. The whole result is sent, page after page, and a C-CANCEL is honoured between answers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ingress.scp.index import IndexReader, IndexUnavailable
from ingress.scp.status import (
    CANCELLED,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    UNABLE_TO_PROCESS,
    error_comment,
)
from ingress.scp.tenancy import called_ae
from pipeline import log
from pipeline.models import TenantId
from pipeline.stores import search
from pipeline.stores.search import BY_KEYWORD, BY_TAG, Condition, Hit, InvalidQuery, Level, Search

_log = log.get(__name__)

PATIENT_ROOT, STUDY_ROOT = "PATIENT", "STUDY"
MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelGet): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelMove): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): STUDY_ROOT,
}
"""The Query/Retrieve SOP classes the SCP serves, by information model (root)."""

LEVELS = {"PATIENT": Level.PATIENT, "STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}

OUT_OF_RESOURCES = 0xA700  # C-FIND's (C-GET and C-MOVE have 0xA701, 0xA702)

_PAGE = 500
_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_UTF8 = "ISO_IR 192"
# Counts and lists the index rows hold, by the level whose hits carry them.
_COMPUTED: dict[Level, dict[str, Callable[[Hit], dict[str, Any]]]] = {
    Level.PATIENT: {
        "00201200": lambda hit: _element("IS", hit.study_count),
        "00201202": lambda hit: _element("IS", hit.series_count),
        "00201204": lambda hit: _element("IS", hit.instance_count),
    },
    Level.STUDY: {
        "00201206": lambda hit: _element("IS", hit.series_count),
        "00201208": lambda hit: _element("IS", hit.instance_count),
        "00080061": lambda hit: (
            {"vr": "CS", "Value": list(hit.modalities)} if hit.modalities else {"vr": "CS"}
        ),
    },
    Level.SERIES: {"00201209": lambda hit: _element("IS", hit.instance_count)},
    Level.INSTANCE: {},
}


@dataclass(frozen=True)
class Query:
    search: Search
    """Its first page; the others follow by offset."""
    level_name: str
    """QueryRetrieveLevel as the identifier named it."""
    returned: tuple[DataElement, ...]
    """The identifier's keys, returned in every answer (with the identifier's VR when empty)."""


def _name(tag: int) -> str:
    return f"{keyword_for_tag(tag) or 'a private attribute'} ({tag:08X})"


def _value(element: DataElement) -> str:
    """A key's value as C-FIND and QIDO-RS write it: a list joined by backslashes."""
    if element.VR == "SQ":
        items: DicomSequence = element.value or DicomSequence()
        if any(_value(inner) for item in items for inner in item):
            raise InvalidQuery(f"{_name(element.tag)}: matching within a sequence is not supported")
        return ""
    value = element.value
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")  # some value: refused below, by name
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _level(identifier: Dataset, model: str) -> tuple[str, Level]:
    name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    level = LEVELS.get(name)
    if level is None:
        raise InvalidQuery(f"QueryRetrieveLevel {name!r} is not one of {', '.join(LEVELS)}")
    if level is Level.PATIENT and model == STUDY_ROOT:
        raise InvalidQuery("the Study Root model has no PATIENT level")
    return name, level


def conditions(identifier: Dataset, level: Level) -> tuple[list[Condition], list[DataElement]]:
    """The identifier's keys as search conditions at ``level``, and every key (to be returned).

    A key with a value is matched or refused (``InvalidQuery``, naming it); an empty key is only
    returned. A key below ``level`` with a value is left to the search, which refuses it by name.
    """
    found: list[Condition] = []
    returned: list[DataElement] = []
    for element in identifier:
        tag = element.tag
        if tag.group in (0x0000, 0x0002) or tag in (_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET):
            continue
        returned.append(element)
        value = _value(element)
        attribute = BY_TAG.get(f"{tag:08X}")
        if attribute is None:
            if value and tag != _RETRIEVE_AE_TITLE:
                raise InvalidQuery(
                    f"{_name(tag)} cannot be matched (send it empty to have it returned); "
                    f"pacsflow matches only {', '.join(BY_KEYWORD)}"
                )
            continue
        if attribute.level > level and not value:
            continue  # an empty key below the level: returned empty, nothing to match
        found.append(Condition(attribute, value))
    return found, returned


def translate(identifier: Dataset, tenant: TenantId, model: str, page: int = _PAGE) -> Query:
    """The search a C-FIND identifier asks for; ``InvalidQuery`` (before any database is asked) when
    it cannot be answered as it is."""
    name, level = _level(identifier, model)
    found, returned = conditions(identifier, level)
    query = Search(level=level, tenant=tenant, conditions=found, limit=page)
    search.statement(query)  # pure: refuses what the index cannot match, naming the key
    return Query(query, name, tuple(returned))


def _element(vr: str, value: object) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]} if value is not None else {"vr": vr}


def answer(hit: Hit, query: Query, retrieve_ae: str) -> Dataset:
    """One pending answer: every key asked for, valued from ``hit`` where the index has it."""
    level = query.search.level
    fragment: dict[str, Any] = orjson.loads(hit.fragment) if hit.fragment else {}
    computed = _COMPUTED[level]
    chosen: dict[str, Any] = {}
    for element in query.returned:
        tag = f"{element.tag:08X}"
        attribute = BY_TAG.get(tag)
        if attribute is not None and attribute.level > level:
            continue  # below the level: one instance's value would not describe the hit
        value = computed[tag](hit) if tag in computed else fragment.get(tag)
        if value is not None and "BulkDataURI" not in value:
            chosen[tag] = value
    if level >= Level.STUDY:
        chosen["0020000D"] = _element("UI", hit.study_uid)
    if level >= Level.SERIES and hit.series_uid is not None:
        chosen["0020000E"] = _element("UI", hit.series_uid)
    if level is Level.INSTANCE and hit.sop_uid is not None:
        chosen["00080018"] = _element("UI", hit.sop_uid)
    values = Dataset.from_json(chosen)
    out = Dataset()
    out.SpecificCharacterSet = _UTF8
    out.QueryRetrieveLevel = query.level_name
    for element in query.returned:
        if element.tag in values:
            out.add(values[element.tag])
        else:
            out.add(DataElement(element.tag, element.VR, DicomSequence() if element.VR == "SQ" else None))
    for tag in ("0020000D", "0020000E", "00080018"):
        if tag in chosen and int(tag, 16) not in out:
            out.add(values[int(tag, 16)])
    out.RetrieveAETitle = retrieve_ae
    return out


def failure(status: int, error: BaseException | str) -> Dataset:
    """A failure's status, with the ErrorComment that says why."""
    out = Dataset()
    out.Status = status
    out.ErrorComment = error_comment(error if isinstance(error, BaseException) else Exception(error))
    return out


async def _read_page(pool: asyncpg.Pool, query: Search) -> tuple[list[Hit], bool]:
    async with pool.acquire() as conn:
        return await search.search(conn, query)


def all_hits(index: IndexReader, query: Search) -> Iterator[list[Hit]]:
    """Every page of ``query``'s hits, read one page at a time, as they are wanted."""
    offset = query.offset
    while True:
        current = dataclasses.replace(query, offset=offset)
        hits, more = index.run(functools.partial(_read_page, query=current))
        yield hits
        if not more or not hits:
            return
        offset += len(hits)


Answer = tuple[int | Dataset, Dataset | None]


class FindHandler:
    """EVT_C_FIND: the answers of one C-FIND request, for its association's tenant."""

    def __init__(
        self, index: IndexReader, tenant_of: Callable[[Association], TenantId], page: int = _PAGE
    ) -> None:
        """``page``: hits read from the index at a time."""
        self._index = index
        self._tenant_of = tenant_of
        self._page = page

    def __call__(self, event: Event) -> Iterator[Answer]:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        try:
            identifier = event.identifier
            query = translate(
                identifier, self._tenant_of(assoc), MODELS[str(event.request.AffectedSOPClassUID)], self._page
            )
        except InvalidQuery as exc:
            _log.warning("find_refused", calling_ae=calling, reason=str(exc))
            yield failure(IDENTIFIER_DOES_NOT_MATCH, exc), None
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            _log.warning("find_refused", calling_ae=calling, reason=str(exc))
            yield failure(IDENTIFIER_DOES_NOT_MATCH, f"the identifier cannot be read: {exc}"), None
            return
        retrieve_ae = called_ae(assoc)  # the title that retrieves from the same tenant
        sent = 0
        try:
            for hits in all_hits(self._index, query.search):
                for hit in hits:
                    if event.is_cancelled:
                        _log.info("find_cancelled", calling_ae=calling, answers=sent)
                        yield CANCELLED, None
                        return
                    yield PENDING, answer(hit, query, retrieve_ae)
                    sent += 1
        except IndexUnavailable as exc:
            _log.warning("find_failed", calling_ae=calling, reason=str(exc))
            yield failure(OUT_OF_RESOURCES, exc), None
            return
        except Exception as exc:  # never a silent end of the answers: a failure that says why
            _log.exception("find_failed", calling_ae=calling)
            yield failure(UNABLE_TO_PROCESS, exc), None
            return
        _log.info("find_answered", calling_ae=calling, level=query.level_name, answers=sent)


def unique_key(identifier: Dataset, level: Level) -> str:
    """The value of the level's unique key; a retrieval must name what it retrieves."""
    keyword = UNIQUE_KEYS[level]
    value = _value(identifier[keyword]) if keyword in identifier else ""
    if not value or search.has_wildcard(value):
        raise InvalidQuery(f"{keyword} must name what is retrieved at the {level.name} level (no wildcards)")
    return value


def retrieval(identifier: Dataset, tenant: TenantId, model: str, page_size: int = 1000) -> Search:
    """The instances a C-GET or C-MOVE identifier names (PS3.4 C.4.2.2.1, C.4.3.2.1): its unique keys
    as conditions of an instance-level search."""
    _, level = _level(identifier, model)
    unique_key(identifier, level)
    found, _ = conditions(identifier, level)
    found = [c for c in found if c.value]  # every key left names instances to retrieve
    query = Search(level=Level.INSTANCE, tenant=tenant, conditions=found, limit=page_size)
    search.statement(query)
    return query
