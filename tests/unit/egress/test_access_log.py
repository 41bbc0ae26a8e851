"""The access-log record of a request (``egress.wado.access_log``): what aiohttp's access logger makes
of real requests to a real server, the client's address behind proxies, and the trace id.

The publisher is never started (there is no broker here): the records requests add stay in its
queue, where these tests read them. Publishing them is tests/integration/test_wado_read.py's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import ClientSession, TCPConnector, web
from aiohttp.test_utils import TestServer, make_mocked_request

from egress.wado.access_log import (
    ACCESS_LOG,
    TRACE_HEADER,
    AccessLogger,
    AccessLogPublisher,
    client_address,
    echo_trace_id,
    trace_id,
    tracing,
)
from egress.wado.errors import BadRequest, errors
from egress.wado.keys import SETTINGS
from egress.wado.urls import PREFIXES
from pipeline import settings as settings_module
from pipeline.models import WadoAccessLog
from pipeline.settings import Settings

BODY = b"x" * 123
METADATA = "/studies/{study}/series/{series}/metadata"
Check = Callable[[ClientSession, str, AccessLogPublisher], Awaitable[None]]


async def _metadata(request: web.Request) -> web.Response:
    if request.query.get("bad"):
        raise BadRequest("bad query")
    return web.Response(body=BODY)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _serve(settings: Settings, check: Check) -> None:
    async def main() -> None:
        app = web.Application(middlewares=[tracing, errors])
        app.on_response_prepare.append(echo_trace_id)
        app[SETTINGS] = settings
        app[ACCESS_LOG] = publisher = AccessLogPublisher(settings)
        for prefix in PREFIXES:
            app.router.add_get(prefix + METADATA, _metadata)
        app.router.add_get("/health", _health)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(access_log_class=AccessLogger)  # the runner's, as serve() has it
        # One connection: aiohttp logs a request before it reads the next one from it.
        async with server, ClientSession(connector=TCPConnector(limit=1)) as client:
            await check(client, str(server.make_url("")).rstrip("/"), publisher)

    asyncio.run(main())


async def _next(publisher: AccessLogPublisher) -> WadoAccessLog:
    """The next record requests added; the logger runs once the answer has gone out."""
    return await asyncio.wait_for(publisher._queue.get(), 10)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_module.load({"PACSFLOW_DATA_DIR": str(tmp_path / "var"), "PACSFLOW_NODE_ID": "web-unit"})


def test_a_dicomweb_request_is_one_record(settings: Settings) -> None:
    async def check(client: ClientSession, base: str, publisher: AccessLogPublisher) -> None:
        headers = {TRACE_HEADER: "trace-0001"}
        async with client.get(f"{base}/dicomweb/studies/1.2.3/series/1.2.3.4/metadata", headers=headers) as r:
            assert r.status == 200 and r.headers[TRACE_HEADER] == "trace-0001"
            await r.read()
        record = await _next(publisher)
        assert record.tenant_id == "default" and record.route == "/dicomweb" + METADATA
        assert (record.study_uid, record.series_uid, record.sop_uid) == ("1.2.3", "1.2.3.4", None)
        assert record.status == 200 and record.bytes >= len(BODY) and record.duration_ms >= 0
        assert record.client_address == "127.0.0.1" and record.trace_id == "trace-0001"
        assert record.worker_node_id == "web-unit"
        datetime.fromisoformat(record.created_time)  # Doris DATETIME text
        assert publisher._queue.empty()

    _serve(settings, check)


def test_another_tenants_request_an_error_and_an_unknown_dicomweb_path(settings: Settings) -> None:
    async def check(client: ClientSession, base: str, publisher: AccessLogPublisher) -> None:
        async with client.get(f"{base}/tenants/alpha/dicomweb/studies/1.2.3/series/1.2.3.4/metadata") as r:
            assert r.status == 200
        record = await _next(publisher)
        assert record.tenant_id == "alpha" and record.route == "/tenants/{tenant}/dicomweb" + METADATA
        async with client.get(f"{base}/dicomweb/studies/1.2.3/series/1.2.3.4/metadata?bad=1") as r:
            assert r.status == 400
            body = await r.read()
        record = await _next(publisher)
        assert record.status == 400 and record.bytes >= len(body)
        # Not routed: the path stands for the route, so mistyped DICOMweb calls are counted.
        async with client.get(f"{base}/dicomweb/studis") as r:
            assert r.status == 404
        record = await _next(publisher)
        assert record.status == 404 and record.route == "/dicomweb/studis" and record.study_uid is None

    _serve(settings, check)


def test_bytes_are_what_went_on_the_wire(settings: Settings) -> None:
    """Status line, headers and body, as nginx's ``$bytes_sent``: what the network carried."""

    async def check(client: ClientSession, base: str, publisher: AccessLogPublisher) -> None:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = "GET /dicomweb/studies/1.2.3/series/1.2.3.4/metadata HTTP/1.1\r\n"
        writer.write(f"{request}Host: {host}\r\nConnection: close\r\n\r\n".encode())
        received = await reader.read()
        writer.close()
        assert received.endswith(BODY)
        assert (await _next(publisher)).bytes == len(received)

    _serve(settings, check)


def test_health_checks_are_no_record(settings: Settings) -> None:
    async def check(client: ClientSession, base: str, publisher: AccessLogPublisher) -> None:
        async with client.get(f"{base}/health") as r:
            assert r.status == 200
        async with client.get(f"{base}/dicomweb/studies/1.2.3/series/1.2.3.4/metadata") as r:
            assert r.status == 200
        # Logged in order on the one connection: had /health made a record, it would be first.
        assert (await _next(publisher)).route == "/dicomweb" + METADATA
        assert publisher._queue.empty()

    _serve(settings, check)


def test_the_client_behind_a_proxy_is_the_first_forwarded_for(settings: Settings) -> None:
    async def check(client: ClientSession, base: str, publisher: AccessLogPublisher) -> None:
        headers = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
        async with client.get(f"{base}/dicomweb/studies/1.2.3/series/1.2.3.4/metadata", headers=headers) as r:
            assert r.status == 200
        assert (await _next(publisher)).client_address == "203.0.113.7"

    _serve(settings, check)


@pytest.mark.parametrize(
    ("headers", "address"),
    [
        ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        ({"X-Forwarded-For": " 203.0.113.7 , 10.0.0.1"}, "203.0.113.7"),
        ({"X-Forwarded-For": "2001:db8::1"}, "2001:db8::1"),
        ({"X-Forwarded-For": ""}, None),  # no proxy's word and no peer (a request made in memory)
        ({}, None),
    ],
)
def test_client_address(headers: dict[str, str], address: str | None) -> None:
    assert client_address(make_mocked_request("GET", "/dicomweb/studies", headers=headers)) == address


@pytest.mark.parametrize("given", ["abc", "trace-0001", str(uuid.uuid4()), "A" * 36])
def test_a_sane_trace_id_is_kept(given: str) -> None:
    assert trace_id(make_mocked_request("GET", "/", headers={TRACE_HEADER: given})) == given


@pytest.mark.parametrize("given", [None, "", "A" * 37, "a b", "a;b", "a/b", "'; DROP TABLE x; --"])
def test_any_other_trace_id_is_replaced_by_a_new_one(given: str | None) -> None:
    headers = {TRACE_HEADER: given} if given is not None else {}
    made = trace_id(make_mocked_request("GET", "/", headers=headers))
    assert made != given and uuid.UUID(made).version == 4


def test_a_replaced_trace_id_is_the_one_echoed_and_recorded(settings: Settings) -> None:
    async def check(client: ClientSession, base: str, publisher: AccessLogPublisher) -> None:
        headers = {TRACE_HEADER: "not sane"}
        async with client.get(f"{base}/dicomweb/studies/1.2.3/series/1.2.3.4/metadata", headers=headers) as r:
            echoed = r.headers[TRACE_HEADER]
        assert echoed != "not sane" and (await _next(publisher)).trace_id == echoed
        async with client.get(f"{base}/dicomweb/studies/1.2.3/series/1.2.3.4/metadata") as r:
            echoed = r.headers[TRACE_HEADER]
        assert uuid.UUID(echoed) and (await _next(publisher)).trace_id == echoed

    _serve(settings, check)
