from __future__ import annotations

import json
import logging

import pytest
import structlog

from pipeline import log, settings


@pytest.fixture(autouse=True)
def restore_logging():  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_the_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(settings.load({"PACSFLOW_LOG_FORMAT": "json", "PACSFLOW_NODE_ID": "n1"}), "scp")
    with structlog.contextvars.bound_contextvars(tenant="t1", trace_id="abc", sop_instance_uid="1.2.3"):
        log.get("test").info("instance_stored", bytes=10)
    logging.getLogger("pynetdicom").warning("from a library")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] | {"timestamp": None} == {
        "event": "instance_stored",
        "bytes": 10,
        "tenant": "t1",
        "trace_id": "abc",
        "sop_instance_uid": "1.2.3",
        "service": "scp",
        "node": "n1",
        "level": "info",
        "logger": "test",
        "timestamp": None,
    }
    assert lines[1]["event"] == "from a library"
    assert lines[1]["service"] == "scp"


def test_console_format_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(settings.load({"PACSFLOW_LOG_FORMAT": "console"}), "scp")
    log.get("test").info("instance_stored", tenant="t1")
    out = capsys.readouterr().out
    assert "instance_stored" in out
    assert not out.lstrip().startswith("{")


def test_auto_is_json_when_stdout_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(settings.load({}), "web")
    log.get("test").info("started")
    assert json.loads(capsys.readouterr().out)["event"] == "started"
