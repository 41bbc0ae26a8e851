"""The Doris Routine Load jobs as `pacsflow doris sql` wrote them (doris/routine_load/jobs/*.sql):
each job's topic and its batch properties, read from the files a deployment applies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

JOBS = Path(__file__).resolve().parents[2] / "doris" / "routine_load" / "jobs"
BATCH = ("desired_concurrent_number", "max_batch_interval", "max_batch_rows", "max_batch_size")
"""The properties that bound a job's tasks."""

_NAME = re.compile(r"CREATE ROUTINE LOAD (\w+) ON (\w+)")
_PAIR = re.compile(r'^\s*"([\w.]+)"\s*=\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)


@dataclass(frozen=True)
class Job:
    name: str
    table: str
    topic: str
    batch: dict[str, int]
    """``BATCH``'s properties, each as a number."""


def jobs(folder: Path = JOBS) -> list[Job]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        text = path.read_text()
        named = _NAME.search(text)
        if named is None:
            raise ValueError(f"{path}: no CREATE ROUTINE LOAD statement")
        pairs = dict(_PAIR.findall(text))
        missing = [key for key in (*BATCH, "kafka_topic") if key not in pairs]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)}")
        batch = {key: int(pairs[key]) for key in BATCH}
        found.append(Job(named.group(1), named.group(2), pairs["kafka_topic"], batch))
    return found
