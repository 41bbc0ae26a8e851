"""Fixtures: a real broker, real pacsflow processes, real DICOM peers."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pipeline.stores.postgres import migrate
from tests.support.dimse import c_echo
from tests.support.mariadb import mysql_server
from tests.support.services import (
    Broker,
    PostgresServer,
    RedisServer,
    Service,
    free_port,
    wait_for,
)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = Broker(tmp_path_factory.mktemp("broker") / "tansu.log").start()
    yield running
    running.stop()


@dataclass
class Scp:
    port: int
    data_dir: Path
    storage_root: Path
    service: Service
    node_id: str

    def files(self) -> list[Path]:
        return sorted(p for p in self.storage_root.rglob("*") if p.is_file())


ScpFactory = Callable[..., Scp]


def wait_for_scp(scp: Scp, timeout: float = 30) -> None:
    # Not a bare TCP probe: pynetdicom holds an association slot for a silent connection until
    # its ACSE timeout, which would skew the association-limit tests.
    wait_for(
        lambda: scp.service.events("scp_listening") or not scp.service.alive(),
        timeout,
        "`pacsflow scp` to listen",
    )
    assert scp.service.alive(), f"pacsflow scp exited: {scp.service.log_path.read_text()[-2000:]}"
    assert c_echo(scp.port, check_port=False)


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator[ScpFactory]:
    """Start `pacsflow scp` against a broker, with settings overridden by keyword."""
    started: list[Scp] = []

    def start(bootstrap: str, wait: bool = True, **env: str) -> Scp:
        index = len(started)
        data_dir = tmp_path / f"scp{index}"
        port = free_port()
        settings = {
            "PACSFLOW_DATA_DIR": str(data_dir),
            "PACSFLOW_SCP_PORT": str(port),
            "PACSFLOW_SCP_HOST": "127.0.0.1",
            "PACSFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "PACSFLOW_KAFKA_REQUEST_TIMEOUT_S": "3",
            "PACSFLOW_NODE_ID": f"test-node-{index}",
            **{f"PACSFLOW_{k.upper()}": v for k, v in env.items()},
        }
        service = Service("scp", settings, tmp_path / f"scp{index}.log").start()
        storage_root = Path(settings.get("PACSFLOW_STORAGE_ROOT", data_dir / "storage"))
        scp = Scp(port, data_dir, storage_root, service, settings["PACSFLOW_NODE_ID"])
        started.append(scp)
        if wait:
            wait_for_scp(scp)
        return scp

    yield start
    for scp in started:
        scp.service.stop()


@pytest.fixture
def scp(start_scp: ScpFactory, broker: Broker) -> Scp:
    return start_scp(broker.bootstrap)


class _SessionServers:
    """The PostgreSQL and Redis the tests share, started on first use and stopped at the end of the
    session. ``TEST_POSTGRES_URL`` (a DSN whose user may create databases) and ``TEST_REDIS_URL``
    point the tests at servers of your own instead; by default they need nothing of the machine's."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self._postgres: PostgresServer | None = None
        self._redis: RedisServer | None = None

    def postgres_url(self) -> str:
        if url := os.environ.get("TEST_POSTGRES_URL"):
            return url
        if self._postgres is None:
            assert self.folder is not None, "the session's folder is set by the session fixture"
            self._postgres = PostgresServer(self.folder / "postgres").start()
        return self._postgres.dsn("postgres")

    def redis_url(self) -> str:
        if url := os.environ.get("TEST_REDIS_URL"):
            return url
        if self._redis is None:
            assert self.folder is not None, "the session's folder is set by the session fixture"
            self._redis = RedisServer(self.folder / "redis.log").start()
        return self._redis.url

    def stop(self) -> None:
        for server in (self._redis, self._postgres):
            if server is not None:
                server.stop()


SESSION_SERVERS = _SessionServers()


@pytest.fixture(scope="session", autouse=True)
def _session_servers() -> Iterator[_SessionServers]:
    # Not under pytest's basetemp: another pytest session (a developer's second terminal) prunes
    # old basetemps, and would delete a running server's data under it.
    folder = Path(tempfile.mkdtemp(prefix="pacsflow-test-servers-"))
    SESSION_SERVERS.folder = folder
    try:
        yield SESSION_SERVERS
    finally:
        SESSION_SERVERS.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis the tests share: keys under a prefix of the test's own."""
    return SESSION_SERVERS.redis_url()


@pytest.fixture(scope="session")
def mysql() -> Iterator[str]:
    """A MySQL-protocol server's URL, ``mysql://user:password@host:port`` without a database: a
    MariaDB of the session's own, or the server ``TEST_MYSQL_URL`` names."""
    with mysql_server() as url:
        yield url


@contextmanager
def scratch_database() -> Iterator[str]:
    """A database of its own on the tests' PostgreSQL, with no tables; dropped afterwards."""
    admin_url = SESSION_SERVERS.postgres_url()
    name = f"pacsflow_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture
def database(empty_database: str) -> str:
    """A database of its own, migrated."""
    asyncio.run(migrate(empty_database))
    return empty_database


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop, hang or restart it."""
    running = Broker(tmp_path / "own-tansu.log").start()
    yield running
    running.stop()


def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(fetch())


WorkerFactory = Callable[..., Service]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start `pacsflow worker` processes; each is returned once it holds partitions."""
    started: list[Service] = []

    def start(bootstrap: str, dsn: str, storage_root: Path, wait: bool = True, **env: str) -> Service:
        index = len(started)
        settings = {
            "PACSFLOW_DATA_DIR": str(tmp_path / f"worker{index}"),
            "PACSFLOW_STORAGE_ROOT": str(storage_root),
            "PACSFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "PACSFLOW_DATABASE_URL": dsn,
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
            "PACSFLOW_KAFKA_FETCH_WAIT_S": "0.05",
            "PACSFLOW_NODE_ID": f"worker-{index}",
            **{f"PACSFLOW_{k.upper()}": v for k, v in env.items()},
        }
        worker = Service("worker", settings, tmp_path / f"worker{index}.log").start()
        started.append(worker)
        if wait:
            wait_for(
                lambda: worker.events("partitions_assigned") or not worker.alive(),
                60,
                "the worker to join its group",
            )
            assert worker.alive(), worker.log_path.read_text()[-3000:]
        return worker

    yield start
    for worker in started:
        worker.stop()
