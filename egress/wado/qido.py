"""QIDO-RS (PS3.18 10.6): the six search routes, from the index (``pipeline.stores.search``).

Every query key is either matched or refused: an unknown key, a key the index cannot match and a
malformed value are 400s that name it, never silently ignored. Values returned come from each
hit's instance fragment, so they are exactly what the metadata says; counts and
ModalitiesInStudy come from the index rows. Answers are cached in Redis under the tenant's
generation, which every indexed batch bumps.
"""

from __future__ import annotations

import functools
import gc
import hashlib
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from egress.wado.errors import BadRequest, NotAcceptable
from egress.wado.keys import CACHE, POOL, SETTINGS
from egress.wado.numbers import whole
from egress.wado.urls import root_for, tenant_of, uid
from pipeline.metadata import BULK_URI_KEY
from pipeline.stores import search
from pipeline.stores.search import BY_KEYWORD, BY_TAG, Condition, Hit, InvalidQuery, Level, Search

DICOM_JSON = "application/dicom+json"
DEFAULT_LIMIT = 100
CONTROL = ("includefield", "limit", "offset", "fuzzymatching")
# Keys whose repeats (``Modality=CT&Modality=MR``) make one list.
_LISTS = (search.Match.UID, search.Match.CODE, search.Match.MODALITIES)
_ACCEPTED = ("application/dicom+json", "application/json", "application/*", "*/*")

# What each level returns without being asked (everything OHIF's study list and viewer read).
_DEFAULTS = {
    Level.STUDY: (
        "00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
        "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00081030",
        "00201206", "00201208",
    ),
    Level.SERIES: (
        "00080005", "00080021", "00080031", "00080060", "0008103E", "00081190", "0020000E",
        "00200011", "00201209", "0020000D",
    ),
    Level.INSTANCE: (
        "00080005", "00080016", "00080018", "00081190", "0020000D", "0020000E", "00200013",
        "00280008", "00280010", "00280011",
    ),
}  # fmt: skip
# ``includefield=all`` at study and series level: the attributes of those levels' modules (PS3.3
# C.7.1.1 Patient, C.7.2.1 General Study, C.7.2.2 Patient Study, C.7.3.1 General Series), not
# every value of the one instance that represents them.
_STUDY_MODULES = frozenset(
    {
        "00080020",
        "00080030",
        "00080050",
        "00080051",
        "00080090",
        "00080096",
        "00081030",
        "00081032",
        "00081048",
        "00081049",
        "00081060",
        "00081062",
        "00200010",
        "00101010",
        "00101020",
        "00101030",
        "00102180",
        "001021B0",
        "00321033",
        "00321060",
        "00081080",
    }
)
_SERIES_MODULES = frozenset(
    {
        "00080021", "00080031", "00080060", "0008103E", "00081050", "00081052", "00081070", "00081072",
        "00081111", "00081250", "00180015", "00181030", "00185100", "00200011", "00200060", "00280108",
        "00280109", "00400244", "00400245", "00400253", "00400254", "00400260", "00400275",
        "00080070", "00081010", "00081090",
    }
)  # fmt: skip


def _tag_of(name: str) -> str | None:
    """``ggggeeee`` of a keyword or a tag given as ``ggggeeee``; None if it is neither."""
    if len(name) == 8:
        try:
            int(name, 16)
        except ValueError:
            pass
        else:
            return name.upper()
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else None


def _includes(values: Iterable[str]) -> set[str] | None:
    """The tags ``includefield`` asks for; None means ``all``."""
    tags: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                return None
            if "." in name:
                raise BadRequest(f"includefield {name!r}: attributes inside sequences cannot be picked")
            tag = _tag_of(name)
            if tag is None:
                raise BadRequest(f"includefield {name!r} is neither a DICOM keyword nor a tag (ggggeeee)")
            tags.add(tag)
    return tags


def _whole(query: MultiMapping[str], name: str, default: int, lowest: int) -> int:
    raw = query.getall(name, [])
    if not raw:
        return default
    if len(raw) > 1:
        raise BadRequest(f"{name} is given {len(raw)} times")
    value = whole(raw[0])
    if value is None:
        raise BadRequest(f"{name}={raw[0]!r} is not a whole number")
    if value < lowest:
        raise BadRequest(f"{name}={value}: it must be at least {lowest}")
    return value


def _fuzzy(query: MultiMapping[str]) -> bool:
    raw = query.get("fuzzymatching", "false").lower()
    if raw not in ("true", "false"):
        raise BadRequest(f"fuzzymatching={raw!r}: it is true or false")
    return raw == "true"


def _conditions(query: MultiMapping[str]) -> list[Condition]:
    conditions: list[Condition] = []
    for key in dict.fromkeys(query.keys()):
        if key in CONTROL:
            continue
        tag = _tag_of(key)
        attribute = BY_TAG.get(tag) if tag else BY_KEYWORD.get(key)
        if attribute is None:
            if tag is None:
                raise BadRequest(
                    f"unknown query key {key!r}: not a DICOM keyword, a tag (ggggeeee) or one of "
                    f"{', '.join(CONTROL)}"
                )
            name = keyword_for_tag(int(tag, 16)) or tag
            raise BadRequest(
                f"{name} ({tag}) cannot be matched: pacsflow matches only "
                f"{', '.join(a for a in BY_KEYWORD)}; ask for it with includefield={name}"
            )
        values = query.getall(key)
        if len(values) > 1:
            values = [",".join(values)] if attribute.match in _LISTS else values
        if len(values) > 1:
            raise BadRequest(f"{key} is given {len(values)} times; it takes one value")
        conditions.append(Condition(attribute, values[0]))
    return conditions


def _parse(request: web.Request, level: Level) -> tuple[Search, set[str] | None, list[str]]:
    settings = request.app[SETTINGS]
    query = request.query
    warnings: list[str] = []
    limit = _whole(query, "limit", DEFAULT_LIMIT, 1)
    if limit > settings.qido_max_limit:
        warnings.append(f"limit {limit} is more than the maximum, {settings.qido_max_limit}: cut to it")
        limit = settings.qido_max_limit
    study = uid(request, "study", "StudyInstanceUID") if "study" in request.match_info else None
    series = uid(request, "series", "SeriesInstanceUID") if "series" in request.match_info else None
    found = Search(
        level=level,
        tenant=tenant_of(request, settings),
        study=study,
        series=series,
        conditions=_conditions(query),
        fuzzy=_fuzzy(query),
        limit=limit,
        offset=_whole(query, "offset", 0, 0),
    )
    return found, _includes(query.getall("includefield", [])), warnings


def _wanted(found: Search, include: set[str] | None) -> tuple[set[str], frozenset[str] | None]:
    """Tags to return, and (for ``all``) which more of the fragment's tags."""
    tags = set(_DEFAULTS[found.level])
    # Above the level of the route's scope, the answer says what the hit belongs to.
    if found.level >= Level.SERIES and found.study is None:
        tags |= set(_DEFAULTS[Level.STUDY])
    if found.level is Level.INSTANCE and found.series is None:
        tags |= set(_DEFAULTS[Level.SERIES])
    tags |= {c.attribute.tag for c in found.conditions}
    if include is not None:
        return tags | include, None
    if found.level is Level.STUDY:
        return tags, _STUDY_MODULES
    if found.level is Level.SERIES:
        return tags, _STUDY_MODULES | _SERIES_MODULES
    return tags, frozenset()  # instance level: everything the fragment has


def _element(vr: str, values: list[Any] | None) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


@functools.lru_cache(maxsize=1024)
def _absent(tag: str) -> dict[str, Any] | None:
    """What an answer holds for a tag its instance does not have: the tag's VR, no value; None for
    a private or unknown tag. Cached: looking the dictionary up was a third of a 500-instance
    answer's time. The same dict goes into every answer, so it is never changed."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except KeyError:
        return None
    return {"vr": vr.split(" or ")[0]}


def _answer(
    hit: Hit, found: Search, tags: set[str], modules: frozenset[str] | None, root: str
) -> dict[str, Any]:
    fragment: dict[str, Any] = orjson.loads(hit.fragment) if hit.fragment else {}
    out: dict[str, Any] = {}
    for tag in tags:
        element = fragment.get(tag) or _absent(tag)
        if element is not None:
            out[tag] = element
    if modules is not None:
        for tag, element in fragment.items():
            if not modules or tag in modules or (found.level is Level.STUDY and tag.startswith("0010")):
                out[tag] = element
    out["0020000D"] = _element("UI", [hit.study_uid])
    url = f"{root}/studies/{hit.study_uid}"
    if hit.series_uid is not None and found.level >= Level.SERIES:
        out["0020000E"] = _element("UI", [hit.series_uid])
        url += f"/series/{hit.series_uid}"
    if hit.sop_uid is not None:
        out["00080018"] = _element("UI", [hit.sop_uid])
        url += f"/instances/{hit.sop_uid}"
    if "00081190" in out:
        out["00081190"] = _element("UR", [url])
    if found.level is Level.STUDY:
        if "00201206" in out:
            out["00201206"] = _element("IS", [hit.series_count])
        if "00201208" in out:
            out["00201208"] = _element("IS", [hit.instance_count])
        if "00080061" in out:
            out["00080061"] = _element("CS", list(hit.modalities))
    if found.level is Level.SERIES and "00201209" in out:
        out["00201209"] = _element("IS", [hit.instance_count])
    return out


def _body(hits: list[Hit], found: Search, tags: set[str], modules: frozenset[str] | None, root: str) -> bytes:
    """The answers to ``hits`` as JSON.

    Without the cyclic garbage collector: parsing 500 fragments makes some 50,000 containers,
    every one of them acyclic and freed by its reference count once the body is made, and the
    collections their allocations set off tripled the time of a 500-instance answer. Nothing
    awaits in between, so no other request runs without it.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        answers = [_answer(hit, found, tags, modules, root) for hit in hits]
        body = orjson.dumps(answers, option=orjson.OPT_SORT_KEYS)
    finally:
        if collecting:
            gc.enable()
    # Fragments' BulkDataURIs are relative to the tenant's root (pipeline.metadata).
    return body.replace(BULK_URI_KEY, BULK_URI_KEY + root.encode() + b"/")


def _acceptable(request: web.Request) -> None:
    accept = request.headers.get("Accept", "")
    if not accept:
        return
    for part in accept.split(","):
        if part.split(";")[0].strip().lower() in _ACCEPTED:
            return
    raise NotAcceptable(f"QIDO-RS answers are {DICOM_JSON}; Accept {accept!r} excludes it")


async def _search(request: web.Request, level: Level) -> web.StreamResponse:
    _acceptable(request)
    settings = request.app[SETTINGS]
    found, include, warnings = _parse(request, level)
    root = root_for(request, settings, found.tenant)
    cache = request.app[CACHE]
    digest = hashlib.blake2b(
        f"{request.path}?{sorted(request.query.items())}|{root}".encode(), digest_size=16
    )
    key = await cache.query_key(found.tenant, digest.hexdigest())
    cached = await cache.get(key) if key else None
    if cached is not None:
        more, body = cached[:1] == b"1", cached[1:]
    else:
        async with request.app[POOL].acquire() as conn:
            try:
                hits, more = await search.search(conn, found)
            except InvalidQuery as exc:
                raise BadRequest(str(exc)) from None
        body = _body(hits, found, *_wanted(found, include), root)
        if key:
            await cache.put(key, (b"1" if more else b"0") + body, settings.cache_ttl_s)
    if more:
        warnings.append("There are additional results that can be requested (use offset)")
    response = web.Response(body=body, content_type=DICOM_JSON)
    if warnings:
        response.headers["Warning"] = ", ".join(f'299 pacsflow "{w}"' for w in warnings)
    response.enable_compression()
    return response


async def studies(request: web.Request) -> web.StreamResponse:
    return await _search(request, Level.STUDY)


async def series(request: web.Request) -> web.StreamResponse:
    return await _search(request, Level.SERIES)


async def instances(request: web.Request) -> web.StreamResponse:
    return await _search(request, Level.INSTANCE)


def add_routes(app: web.Application, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/studies", studies)
        app.router.add_get(f"{prefix}/series", series)
        app.router.add_get(f"{prefix}/instances", instances)
        app.router.add_get(f"{prefix}/studies/{{study}}/series", series)
        app.router.add_get(f"{prefix}/studies/{{study}}/instances", instances)
        app.router.add_get(f"{prefix}/studies/{{study}}/series/{{series}}/instances", instances)
