"""A UID or tenant in a DICOMweb URL is checked whole: a control character or a non-ASCII digit
anywhere in it is a 400 with a readable JSON body on every route of a real `pacsflow web`, not a
404 for a look-up that was never valid, nor an answer for a UID that differs from the one asked.

One instance per tenant is stored through `pacsflow scp` and indexed by `pacsflow worker`, so
every route answers 200 with the good identifiers: the 400s come from the bad characters alone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pipeline.stores.postgres import migrate
from tests.conftest import scratch_database
from tests.integration.test_wado_metadata import get
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import store_one
from tests.support.services import Broker
from tests.support.stack import indexed, running

pytestmark = pytest.mark.broker

# Every route that takes a UID, with the UIDs it takes ({s}tudy, {se}ries, {i}nstance).
ROUTES = (
    "/studies/{s}", "/studies/{s}/metadata", "/studies/{s}/thumbnail", "/studies/{s}/series",
    "/studies/{s}/instances", "/studies/{s}/series/{se}", "/studies/{s}/series/{se}/metadata",
    "/studies/{s}/series/{se}/thumbnail", "/studies/{s}/series/{se}/instances",
    "/studies/{s}/series/{se}/instances/{i}", "/studies/{s}/series/{se}/instances/{i}/metadata",
    "/studies/{s}/series/{se}/instances/{i}/rendered", "/studies/{s}/series/{se}/instances/{i}/thumbnail",
    "/studies/{s}/series/{se}/instances/{i}/frames/1",
    "/studies/{s}/series/{se}/instances/{i}/frames/1/rendered",
    "/studies/{s}/series/{se}/instances/{i}/frames/1/thumbnail",
    "/studies/{s}/series/{se}/instances/{i}/bulkdata/7FE00010",
)  # fmt: skip
# QIDO-RS routes with no UID in the path take them as query keys.
SEARCHES = (
    ("/studies", "StudyInstanceUID", "s"),
    ("/series", "SeriesInstanceUID", "se"),
    ("/instances", "SOPInstanceUID", "i"),
    ("/instances", "StudyInstanceUID", "s"),
)
WHAT = {"s": "StudyInstanceUID", "se": "SeriesInstanceUID", "i": "SOPInstanceUID"}
OCTETS = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# Appended to a good UID, percent-encoded: ``$`` matched before a final newline; only a trailing
# NUL or space is DICOM padding.
SUFFIXES = ("%0A", "%0D%0A", "%0D", "%09", "%0B", "%7F", "%D9%A1", "%EF%BC%91")  # Arabic, fullwidth 1


@dataclass
class Stack:
    base: str
    uids: dict[str, dict[str, str]]
    """Per tenant (None: the default one), its instance's s, se and i."""


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("wado-bad-identifiers")
    with scratch_database() as dsn:
        asyncio.run(migrate(dsn))
        with running(
            broker.bootstrap,
            redis_url,
            tmp,
            dsn,
            scp={"PACSFLOW_SCP_TENANTS": "ALPHA=alpha"},
            web={"PACSFLOW_VIEWER": "off"},
        ) as services:
            run = uuid.uuid4().int % 10**12
            uids: dict[str, dict[str, str]] = {}
            for tenant, called, n in (("", "PACSFLOW", 1), ("alpha", "ALPHA", 2)):
                ds = dicomdata.ct_series(uid(run, n), uid(run, n, 1), 1, rows=16, columns=16)[0]
                assert store_one(services.scp_port, ds, ExplicitVRLittleEndian, called=called).Status == 0
                uids[tenant] = {"s": ds.StudyInstanceUID, "se": ds.SeriesInstanceUID, "i": ds.SOPInstanceUID}
            indexed(dsn, 2)
            yield Stack(services.base, uids)


def root(stack: Stack, tenant: str) -> str:
    return f"{stack.base}/tenants/{tenant}/dicomweb" if tenant else f"{stack.base}/dicomweb"


def accept(path: str) -> dict[str, str]:
    return {"Accept": OCTETS} if path.endswith(("/frames/1", "/bulkdata/7FE00010")) else {}


def refused(url: str, headers: dict[str, str], *named: str) -> None:
    status, answer_headers, body = get(url, **headers)
    assert status == 400, (url, status, body[:300])
    assert answer_headers["content-type"].startswith("application/json"), url
    error = json.loads(body)["error"]
    assert any(name in error for name in named), (url, error)


@pytest.mark.parametrize("tenant", ["", "alpha"])
def test_every_route_answers_the_good_identifiers(stack: Stack, tenant: str) -> None:
    good = stack.uids[tenant]
    for route in ROUTES:
        path = route.format(**good)
        status, _, body = get(root(stack, tenant) + path, **accept(path))
        assert status == 200, (route, body[:300])
    for route, key, part in SEARCHES:
        status, _, body = get(f"{root(stack, tenant)}{route}?{key}={good[part]}")
        assert status == 200 and len(json.loads(body)) == 1, (route, key, body[:300])


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("tenant", ["", "alpha"])
def test_a_uid_with_a_control_character_or_foreign_digit_is_a_400_on_every_route(
    stack: Stack, tenant: str, suffix: str
) -> None:
    good = stack.uids[tenant]
    for route in ROUTES:
        for part in ("s", "se", "i"):
            if f"{{{part}}}" not in route:
                continue
            path = route.format(**{**good, part: good[part] + suffix})
            refused(root(stack, tenant) + path, accept(path), WHAT[part])
    for route, key, part in SEARCHES:
        refused(f"{root(stack, tenant)}{route}?{key}={good[part]}{suffix}", {}, key)


@pytest.mark.parametrize("inside", ["%0A", "%00", "%09", "%7F", "%D9%A1"])
def test_a_character_inside_a_uid_is_a_400(stack: Stack, inside: str) -> None:
    good = stack.uids[""]
    study = good["s"].replace(".", f".{inside}", 1)
    refused(f"{root(stack, '')}/studies/{study}/series/{good['se']}/metadata", {}, "StudyInstanceUID")
    refused(f"{root(stack, '')}/studies?StudyInstanceUID={study}", {}, "StudyInstanceUID")


@pytest.mark.parametrize("suffix", [*SUFFIXES, "%00", "%20"])
def test_a_tenant_with_a_control_character_is_a_400_on_every_route(stack: Stack, suffix: str) -> None:
    good = stack.uids["alpha"]
    for path in (*(route.format(**good) for route in ROUTES), "/studies", "/series", "/instances"):
        refused(f"{stack.base}/tenants/alpha{suffix}/dicomweb{path}", accept(path), "tenant")
