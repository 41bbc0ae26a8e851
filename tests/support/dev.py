"""`pacsflow dev` started as a user starts it, for the end-to-end tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import clean_environment, wait_for


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    output: Path
    scp_port: int
    http_port: int
    data_dir: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def events(self, name: str, service: str | None = "dev") -> list[dict[str, object]]:
        """Log lines of one event; by default those of `pacsflow dev` itself, not of its children."""
        found = []
        for line in self.text().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                record = json.loads(line)
                if record.get("event") == name and service in (None, record.get("service")):
                    found.append(record)
        return found

    def bootstrap(self) -> str:
        match = re.search(r"Kafka\s+(\S+)", self.text())
        assert match, "the banner names the Kafka bootstrap"
        return match.group(1)

    def child_pids(self, service: str | None = "dev") -> dict[str, int]:
        """The latest pid of each child (``service=None``: grandchildren too, e.g. SCP replicas)."""
        started = self.events("child_started", service)
        return {f"{e['service']}/{e['child']}": int(e["pid"]) for e in started}  # type: ignore[call-overload]


def start_dev(
    data_dir: Path, output: Path, scp_port: int, http_port: int, settings: dict[str, str] | None = None
) -> Dev:
    env = {
        **clean_environment(),
        **(settings or {}),
        "PACSFLOW_DATA_DIR": str(data_dir),
        "PACSFLOW_SCP_PORT": str(scp_port),
        "PACSFLOW_HTTP_PORT": str(http_port),
        "PACSFLOW_LOG_FORMAT": "json",
    }
    env.pop("NOTIFY_SOCKET", None)
    with output.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "dev"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    dev = Dev(process, output, scp_port, http_port, data_dir)
    wait_for(
        lambda: dev.text().count("pacsflow is running") or process.poll() is not None,
        120,
        "pacsflow dev to print its endpoints",
    )
    assert process.poll() is None, dev.text()[-3000:]
    return dev
