"""pacsflow creates its topics, with the configured partition count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import topics
from tests.support.services import Broker

pytestmark = pytest.mark.broker


def test_topics_command_creates_every_topic_with_the_configured_partitions(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "tansu.log").start()
    try:
        env = {
            **os.environ,
            "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
            "PACSFLOW_KAFKA_PARTITIONS": "3",
            "PACSFLOW_DATA_DIR": str(tmp_path / "var"),
        }
        first = subprocess.run(
            [sys.executable, "-m", "pipeline", "topics"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert first.returncode == 0, first.stderr
        assert all(name in first.stdout for name in topics.ALL)
        assert {name: broker.partitions(name) for name in topics.ALL} == {name: 3 for name in topics.ALL}
        again = subprocess.run(
            [sys.executable, "-m", "pipeline", "topics"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert "none (all existed)" in again.stdout
    finally:
        broker.stop()


def test_services_that_need_kafka_say_how_to_get_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    env["PACSFLOW_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "scp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "PACSFLOW_KAFKA_BOOTSTRAP is empty" in result.stderr
    assert "pacsflow dev" in result.stderr


def test_bad_settings_stop_a_service_with_every_problem_named(tmp_path: Path) -> None:
    env = {**os.environ, "PACSFLOW_SCP_PORT": "99999", "PACSFLOW_LOG_LEVEL": "loud"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "scp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "PACSFLOW_SCP_PORT='99999'" in result.stderr
    assert "PACSFLOW_LOG_LEVEL='loud'" in result.stderr
