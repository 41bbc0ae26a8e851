"""The pacsflow stack the DICOMweb tests read from: `pacsflow scp`, `worker` and `web` as real
processes on one database, the session's broker and Redis, each on free loopback ports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pipeline.stores.postgres import migrate
from tests.conftest import query, scratch_database
from tests.support.services import Service, free_port, wait_for

AS_IS: Mapping[str, str] = MappingProxyType({})
"""A service started with no settings beyond the stack's own."""
READY = {"scp": "scp_listening", "worker": "partitions_assigned", "web": "web_listening"}


@dataclass
class Running:
    scp_port: int
    http_port: int
    services: dict[str, Service]
    """By command (`scp`, `worker`, `web`): those that were asked for."""
    dsn: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def web(self) -> Service:
        return self.services["web"]


@contextmanager
def running(
    broker_bootstrap: str,
    redis_url: str,
    folder: Path,
    dsn: str,
    *,
    common: Mapping[str, str] = AS_IS,
    scp: Mapping[str, str] | None = AS_IS,
    worker: Mapping[str, str] | None = AS_IS,
    web: Mapping[str, str] | None = AS_IS,
) -> Iterator[Running]:
    """Start the services not given as None, each with its own settings added to ``common``; yield
    once every one is ready, stop them all on the way out. The database must be migrated.

    Data folders and logs are ``folder/<command>``: a second stack on the same database wants a
    folder of its own. Redis keys are under a prefix named for the database."""
    shared = {
        "PACSFLOW_STORAGE_ROOT": str(folder / "storage"),
        "PACSFLOW_KAFKA_BOOTSTRAP": broker_bootstrap,
        "PACSFLOW_DATABASE_URL": dsn,
        "PACSFLOW_REDIS_URL": redis_url,
        "PACSFLOW_REDIS_PREFIX": f"test-{dsn.rsplit('/', 1)[1]}:",
        **common,
    }
    scp_port, http_port = free_port(), free_port()
    own = {
        "scp": {"PACSFLOW_SCP_PORT": str(scp_port), "PACSFLOW_SCP_HOST": "127.0.0.1"},
        # As `pacsflow dev` runs it on the embedded broker: the group settles within seconds of a
        # previous module's worker leaving it, and a series' metadata file follows within a second.
        "worker": {
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
            "PACSFLOW_KAFKA_FETCH_WAIT_S": "0.05",
            "PACSFLOW_METADATA_WINDOW_S": "1",
        },
        "web": {"PACSFLOW_HTTP_PORT": str(http_port)},
    }
    folder.mkdir(parents=True, exist_ok=True)
    services: dict[str, Service] = {}
    with ExitStack() as stopping:
        for command, extra in (("scp", scp), ("worker", worker), ("web", web)):
            if extra is None:
                continue
            env = {**shared, "PACSFLOW_DATA_DIR": str(folder / command), **own[command], **extra}
            services[command] = Service(command, env, folder / f"{command}.log").start()
            stopping.callback(services[command].stop)  # stopped in reverse: web first, scp last
        for command, service in services.items():
            _ready(service, READY[command])
        yield Running(scp_port, http_port, services, dsn)


@contextmanager
def on_a_new_database(
    broker_bootstrap: str, redis_url: str, folder: Path, **services: Mapping[str, str] | None
) -> Iterator[Running]:
    """``running`` on a database of its own, migrated first and dropped afterwards."""
    with scratch_database() as dsn:
        asyncio.run(migrate(dsn))
        with running(broker_bootstrap, redis_url, folder, dsn, **services) as started:
            yield started


def _ready(service: Service, event: str, timeout: float = 60) -> None:
    what = f"`pacsflow {service.command}`"
    try:
        wait_for(lambda: service.events(event) or not service.alive(), timeout, f"{what} to log {event}")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; its log ends:\n{_tail(service)}") from None
    assert service.alive(), f"{what} exited before {event}; its log ends:\n{_tail(service)}"


def _tail(service: Service) -> str:
    return service.log_path.read_text(errors="replace")[-3000:]


def indexed(dsn: str, count: int, timeout: float = 60) -> None:
    """Until the index holds ``count`` instances: what the worker promises once it has them."""
    wait_for(
        lambda: query(dsn, "SELECT count(*)::int AS n FROM dicom_instance_meta")[0]["n"] == count,
        timeout,
        f"{count} instances indexed",
    )
