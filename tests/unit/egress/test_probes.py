"""The web server's ``/ready`` and ``/metrics`` (``egress.wado.routes``), over real HTTP, with a real
PostgreSQL up or a port where none listens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from egress.wado.access_log import AccessLogPublisher
from egress.wado.app import ROUTES, TimedAccessLogger, create_app
from pipeline import settings as settings_module
from pipeline.dev.stack import free_port
from pipeline.metrics import instruments
from pipeline.models import WadoAccessLog

Check = Callable[[ClientSession, str], Awaitable[None]]


def _serve(tmp_path: Path, database_url: str, check: Check, routes: instruments.Routes | None = None) -> None:
    settings = settings_module.load(
        {
            "PACSFLOW_DATA_DIR": str(tmp_path / "var"),
            "PACSFLOW_DATABASE_URL": database_url,
            # Nothing listens there: the broker is down.
            "PACSFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "PACSFLOW_VIEWER": "off",
        }
    )

    async def main() -> None:
        app = create_app(settings)
        if routes is not None:
            app[ROUTES] = routes
        server = TestServer(app)
        await server.start_server(access_log_class=TimedAccessLogger)  # serve's access logger
        try:
            async with ClientSession() as client:
                await check(client, str(server.make_url("")).rstrip("/"))
        finally:
            await server.close()

    asyncio.run(main())


def test_ready_is_503_naming_the_database_while_it_is_down(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/ready") as response:
            assert response.status == 503
            answer = await response.json()
        assert answer["status"] == "not ready"
        assert set(answer["failing"]) == {"database"}  # the broker is down too, but not required
        assert answer["failing"]["database"]  # why, not only that
        assert answer["informational"]["broker"] not in ("", "ok")
        async with client.get(base + "/health") as response:
            assert response.status == 200  # alive all the same: no restart would help

    _serve(tmp_path, f"postgresql://pacsflow@127.0.0.1:{free_port()}/pacsflow", check)


def test_ready_once_the_database_answers_though_the_broker_is_down(tmp_path: Path, database: str) -> None:
    # Reads need only the database, and STOW-RS spools to the outbox: the broker is reported only.
    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/ready") as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["status"] == "ready"
        assert answer["checks"] == ["database"]
        assert answer["informational"]["broker"] not in ("", "ok")  # why it is away

    _serve(tmp_path, database, check)


def _health_count(text: str) -> float:
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pacsflow_http_request_seconds_count" and sample.labels["route"] == "/health"
    ]
    return sum(sample.value for sample in samples)


def test_metrics_time_requests_by_route_and_show_the_outbox(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            before = _health_count(await response.text())
        for _ in range(3):
            async with client.get(base + "/health") as response:
                assert response.status == 200
        async with client.get(base + "/metrics") as response:
            text = await response.text()
        assert _health_count(text) == before + 3
        assert 'pacsflow_outbox_events{service="web"} 0.0' in text
        assert 'pacsflow_scrape_source_up{source="outbox"} 1.0' in text

    _serve(tmp_path, f"postgresql://pacsflow@127.0.0.1:{free_port()}/pacsflow", check)


class _Unwritable(instruments.Routes):
    """What a full disk makes of the timers' files (their mmap fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def observe(self, resource: object, method: str, seconds: float) -> None:
        self.attempts += 1
        raise OSError(28, "No space left on device")


def test_an_answer_and_its_access_log_do_not_depend_on_its_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unwritable = _Unwritable()
    logged: list[WadoAccessLog] = []
    add = AccessLogPublisher.add

    def adding(self: AccessLogPublisher, record: WadoAccessLog) -> None:
        logged.append(record)
        add(self, record)

    monkeypatch.setattr(AccessLogPublisher, "add", adding)

    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/health") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with client.get(base + "/dicomweb/studies") as response:
            await response.read()  # whatever the answer (no database here), it is logged
            status = response.status
        # The access log writes once the answer is sent, which the client may see first.
        for _ in range(100):
            if logged:
                break
            await asyncio.sleep(0.05)
        assert [(r.route, r.status) for r in logged] == [("/dicomweb/studies", status)]

    _serve(tmp_path, f"postgresql://pacsflow@127.0.0.1:{free_port()}/pacsflow", check, unwritable)
    assert unwritable.attempts == 2  # the timer was tried, and failed, each time
