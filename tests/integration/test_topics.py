"""pacsflow creates its topics, with the configured partition count; commands say what they need."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import topics
from tests.support.services import Broker, pacsflow

pytestmark = pytest.mark.broker


def test_topics_command_creates_every_topic_with_the_configured_partitions(
    own_broker: Broker, tmp_path: Path
) -> None:
    env = {
        "PACSFLOW_KAFKA_BOOTSTRAP": own_broker.bootstrap,
        "PACSFLOW_KAFKA_PARTITIONS": "3",
        "PACSFLOW_DATA_DIR": str(tmp_path / "var"),
    }
    first = pacsflow("topics", env=env)
    assert first.returncode == 0, first.stderr
    assert all(name in first.stdout for name in topics.ALL)
    assert {name: own_broker.partitions(name) for name in topics.ALL} == {name: 3 for name in topics.ALL}
    again = pacsflow("topics", env=env)
    assert again.returncode == 0, again.stderr
    assert "none (all existed)" in again.stdout


@pytest.mark.parametrize(
    ("command", "needs"),
    [
        ("scp", "PACSFLOW_KAFKA_BOOTSTRAP"),
        ("worker", "PACSFLOW_KAFKA_BOOTSTRAP"),
        ("migrate", "PACSFLOW_DATABASE_URL"),
    ],
)
def test_services_say_how_to_get_what_they_need(tmp_path: Path, command: str, needs: str) -> None:
    empty = {"PACSFLOW_KAFKA_BOOTSTRAP": "", "PACSFLOW_DATABASE_URL": "", "PACSFLOW_DATA_DIR": str(tmp_path)}
    result = pacsflow(command, env=empty)
    assert result.returncode == 1
    assert f"{needs} is empty" in result.stderr
    assert "pacsflow dev" in result.stderr


def test_bad_settings_stop_a_service_with_every_problem_named() -> None:
    result = pacsflow("scp", env={"PACSFLOW_SCP_PORT": "99999", "PACSFLOW_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert "PACSFLOW_SCP_PORT='99999'" in result.stderr
    assert "PACSFLOW_LOG_LEVEL='loud'" in result.stderr
