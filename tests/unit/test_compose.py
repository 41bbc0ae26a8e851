"""compose/docker-compose.yml checked against the Compose Specification and against pacsflow itself.

There is no Docker engine to try the file on, so it is checked for what would make `docker compose
up` refuse it or leave a service broken:

- the Compose Specification's own JSON schema, vendored as tests/support/compose-spec.json: a copy of
  `schema/compose-spec.json` from https://github.com/compose-spec/compose-spec at commit
  170098ba07d9f53c383a41bfd4c5166b0a4529a6 (replace the file, and this line, to follow a newer one);
- every service built from the pacsflow image runs a command `pacsflow` has, with options it has:
  both read from pipeline/cli.py's argument parser, never from a list kept here;
- every `PACSFLOW_*` name a service mentions (environment, env_file, healthcheck) is a setting, and
  each pacsflow service's effective settings load;
- every `depends_on` names a service, waits for a one-shot to complete and for a healthcheck only
  where there is one; every file a service mounts is in the repository.

compose/env.example's names are checked against the settings by tests/unit/pipeline/test_docs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline import cli
from pipeline import settings as settings_module
from pipeline.errors import SettingsError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "support" / "compose-spec.json"

KNOWN_SETTINGS = frozenset(
    {setting.env for _, setting in settings_module.SETTINGS} | {settings_module.ENV_FILE}
)
SETTING_NAME = re.compile(r"\bPACSFLOW_[A-Z0-9_]+")
COMPLETED = "service_completed_successfully"
HEALTHY = "service_healthy"

Document = dict[str, Any]


def compose_document() -> Document:
    document: Document = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


# -- the Compose Specification ------------------------------------------------------------------


@cache
def _validator() -> jsonschema.Draft7Validator:
    # Its $schema names draft 07 by a URL jsonschema does not map to a draft: named here instead.
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: Document) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.path)))
    ]


# -- pacsflow's commands --------------------------------------------------------------------------


def cli_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command the parser runs (``("doris", "apply")`` too), with the parser of its options."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(cli_commands(sub, (*path, name)))
    return found or {path: parser}


def command_problems(name: str, argv: list[str]) -> list[str]:
    parser = cli._parser()
    commands = cli_commands(parser)
    words = tuple(argv)
    path = next((p for p in sorted(commands, key=len, reverse=True) if words[: len(p)] == p), None)
    if path is None:
        known = ", ".join(" ".join(p) for p in sorted(commands))
        return [f"{name}: `pacsflow {' '.join(argv)}` is no pacsflow command (pacsflow has: {known})"]
    options = commands[path]._option_string_actions
    # Stricter than argparse, which would take an abbreviation (--dry for --dry-run): a later option
    # sharing the prefix would silently change what the service runs.
    unknown = [
        f"{name}: `pacsflow {' '.join(path)}` has no option {word.split('=', 1)[0]}"
        for word in argv[len(path) :]
        if word.startswith("-") and word.split("=", 1)[0] not in options
    ]
    if unknown:
        return unknown
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            message = said.getvalue().strip().splitlines()[-1]
            return [f"{name}: `pacsflow {' '.join(argv)}`: {message}"]
    return []


# -- settings --------------------------------------------------------------------------------------


def _env_files(service: Mapping[str, Any]) -> list[str]:
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str) else entries
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


def effective_environment(service: Mapping[str, Any], compose_dir: Path) -> dict[str, str]:
    """What the container's environment gets from compose: env_file first, environment over it."""
    values: dict[str, str] = {}
    for path in _env_files(service):
        if (compose_dir / path).is_file():  # a missing one is reported by mount_problems
            values.update(settings_module.read_env_file(compose_dir / path))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    values.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return values


def setting_problems(name: str, service: Mapping[str, Any], compose_dir: Path, pacsflow: bool) -> list[str]:
    environment = effective_environment(service, compose_dir)
    # Keys and every string (healthcheck code reads os.environ too), env_file names included.
    mentioned = set(SETTING_NAME.findall(json.dumps(service))) | set(environment)
    problems = [
        f"{name}: {variable} is no pacsflow setting (pipeline/settings.py SETTINGS)"
        for variable in sorted(mentioned)
        if variable.startswith("PACSFLOW_") and variable not in KNOWN_SETTINGS
    ]
    if pacsflow:
        known = {
            k: v for k, v in environment.items() if k in KNOWN_SETTINGS and k != settings_module.ENV_FILE
        }
        try:
            settings_module.load(known)
        except SettingsError as exc:
            problems.append(f"{name}: its settings do not load: {exc}")
    return problems


# -- dependencies and files ----------------------------------------------------------------------


def is_one_shot(service: Mapping[str, Any]) -> bool:
    """A service whose process is meant to end: compose does not restart it once it succeeded."""
    restart = str(service.get("restart", "no"))
    return restart == "no" or restart.startswith("on-failure")


def _depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {target: spec.get("condition", "service_started") for target, spec in depends.items()}


def dependency_problems(services: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            if target not in services:
                problems.append(f"{name}: depends on {target}, which is no service")
                continue
            one_shot = is_one_shot(services[target])
            if one_shot and condition != COMPLETED:
                problems.append(f"{name}: waits for the one-shot {target} with {condition}, not {COMPLETED}")
            if not one_shot and condition == COMPLETED:
                problems.append(f"{name}: waits for {target} to complete, which it never does (it restarts)")
            check = services[target].get("healthcheck")
            if condition == HEALTHY and (not check or check.get("disable")):
                problems.append(f"{name}: waits for {target} to be healthy, which has no healthcheck")
    return problems


def _mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, source) of each volume entry: kind is bind or volume."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source = entry.split(":", 1)[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, kind = entry.get("source", ""), entry.get("type", "volume")
        found.append((kind, source))
    return found


def mount_problems(document: Document, compose_dir: Path) -> list[str]:
    problems = []
    repository = compose_dir.parent
    declared = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        files = [source for kind, source in _mounts(service) if kind == "bind"]
        files += _env_files(service)
        build = service.get("build")
        if isinstance(build, dict):  # the Dockerfile is relative to the context
            files.append(str(Path(build.get("context", ".")) / build.get("dockerfile", "Dockerfile")))
        for source in files:
            path = (compose_dir / source).resolve()
            if not path.is_relative_to(repository):
                problems.append(f"{name}: mounts {source}, outside the repository")
            elif not path.exists():
                problems.append(f"{name}: {source} does not exist (from {compose_dir.name}/)")
        for kind, source in _mounts(service):
            if kind == "volume" and source and source not in declared:
                problems.append(f"{name}: mounts the volume {source}, which the file does not declare")
    return problems


# -- all of it -------------------------------------------------------------------------------------


def pacsflow_services(document: Document) -> dict[str, Any]:
    """The services built from the pacsflow image (the x-pacsflow anchor): their command is pacsflow's."""
    image = document["x-pacsflow"]["image"]
    return {name: service for name, service in document["services"].items() if service.get("image") == image}


def problems(document: Document, compose_dir: Path = COMPOSE_DIR) -> list[str]:
    services = document["services"]
    pacsflow = pacsflow_services(document)
    found = []
    for name, service in pacsflow.items():
        command = service.get("command")
        if command is None:
            found.append(f"{name}: no command, so the image's `pacsflow --help` is all it runs")
            continue
        found += command_problems(name, command.split() if isinstance(command, str) else list(command))
    for name, service in services.items():
        found += setting_problems(name, service, compose_dir, pacsflow=name in pacsflow)
    found += dependency_problems(services)
    found += mount_problems(document, compose_dir)
    return found


# -- the tests -------------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors(compose_document()) == []


def test_the_schema_rejects_what_compose_would_refuse() -> None:
    document = compose_document()
    document["services"]["scp"]["ports"] = "11112:11112"  # a string where a list belongs
    document["services"]["web"]["restart_policy"] = "always"  # no such service key
    errors = "\n".join(schema_errors(document))
    assert "services/scp/ports" in errors
    assert "restart_policy" in errors


def test_compose_file_agrees_with_pacsflow() -> None:
    assert problems(compose_document()) == []


def test_commands_are_read_from_pacsflows_parser() -> None:
    commands = cli_commands(cli._parser())
    assert {("scp",), ("worker",), ("web",), ("topics",), ("migrate",), ("doris", "apply")} <= set(commands)
    assert ("doris",) not in commands  # a group, not a command
    assert "--dry-run" in commands[("doris", "apply")]._option_string_actions


def _mutated(change: str) -> Document:
    document = compose_document()
    services = document["services"]
    if change == "unknown command":
        services["worker"]["command"] = ["wroker"]
    elif change == "unknown nested command":
        services["doris-apply"]["command"] = ["doris", "aply"]
    elif change == "unknown option":
        services["doris-apply"]["command"] = ["doris", "apply", "--dry"]
    elif change == "bad option value":
        services["doris-apply"]["command"] = ["doris", "apply", "--only", "views"]
    elif change == "unknown setting":
        services["web"]["environment"] = {"PACSFLOW_HTTP_PORTS": "8080"}
    elif change == "unknown setting, list form":
        services["scp"]["environment"] = ["PACSFLOW_SCP_AE=PACSFLOW"]
    elif change == "bad setting value":
        services["web"]["environment"] = {"PACSFLOW_HTTP_PORT": "eighty"}
    elif change == "one-shot waited as started":
        services["web"]["depends_on"]["migrate"] = {"condition": "service_started"}
    elif change == "healthy without healthcheck":
        services["grafana"]["depends_on"] = {"redis": {"condition": HEALTHY}}
        del services["redis"]["healthcheck"]
    elif change == "unknown dependency":
        services["web"]["depends_on"]["postgress"] = {"condition": HEALTHY}
    elif change == "missing file":
        services["prometheus"]["volumes"][0] = (
            "./prometheus/prometheus.yaml:/etc/prometheus/prometheus.yml:ro"
        )
    elif change == "undeclared volume":
        services["nginx"]["volumes"].append("nginx-cache:/var/cache/nginx")
    return document


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        ("unknown command", "worker: `pacsflow wroker` is no pacsflow command"),
        ("unknown nested command", "doris-apply: `pacsflow doris aply` is no pacsflow command"),
        ("unknown option", "doris-apply: `pacsflow doris apply` has no option --dry"),
        ("bad option value", "doris-apply: `pacsflow doris apply --only views`: "),
        ("unknown setting", "web: PACSFLOW_HTTP_PORTS is no pacsflow setting"),
        ("unknown setting, list form", "scp: PACSFLOW_SCP_AE is no pacsflow setting"),
        ("bad setting value", "web: its settings do not load: invalid settings:\n  PACSFLOW_HTTP_PORT="),
        ("one-shot waited as started", "web: waits for the one-shot migrate with service_started"),
        ("healthy without healthcheck", "grafana: waits for redis to be healthy, which has no healthcheck"),
        ("unknown dependency", "web: depends on postgress, which is no service"),
        ("missing file", "prometheus: ./prometheus/prometheus.yaml does not exist"),
        ("undeclared volume", "nginx: mounts the volume nginx-cache, which the file does not declare"),
    ],
)
def test_checker_reports_each_mistake(change: str, reported: str) -> None:
    before = problems(compose_document())
    after = problems(_mutated(change))
    new = [problem for problem in after if problem not in before]
    assert any(problem.startswith(reported) for problem in new), new


def test_env_file_variables_are_checked(tmp_path: Path) -> None:
    compose_dir = tmp_path / "compose"
    compose_dir.mkdir()
    (compose_dir / "env.example").write_text(
        (COMPOSE_DIR / "env.example").read_text() + "PACSFLOW_WORKER_THREADS=4\n"
    )
    service = copy.deepcopy(compose_document()["services"]["worker"])
    assert setting_problems("worker", service, compose_dir, pacsflow=True) == [
        "worker: PACSFLOW_WORKER_THREADS is no pacsflow setting (pipeline/settings.py SETTINGS)"
    ]


def _settings_of(name: str) -> settings_module.Settings:
    environment = effective_environment(compose_document()["services"][name], COMPOSE_DIR)
    return settings_module.load({k: v for k, v in environment.items() if k in KNOWN_SETTINGS})


def test_prometheus_scrapes_the_ports_the_services_listen_on() -> None:
    services = compose_document()["services"]
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    scraped = {
        name: int(sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert scraped == {
        "web": _settings_of("web").http_port,
        "worker": _settings_of("worker").worker_metrics_port,
        "scp": _settings_of("scp").scp_metrics_port,
    }
    for name, port in scraped.items():
        assert str(port) in map(str, services[name].get("expose", [])), f"{name} does not expose {port}"


def _dockerfile() -> str:
    return (COMPOSE_DIR / "Dockerfile").read_text()


def test_pacsflow_owns_the_directories_its_volumes_are_first_mounted_on() -> None:
    """An empty named volume takes the owner of the image's directory; one the image lacks is root's,
    and the pacsflow user could not write to it."""
    owned = {
        path
        for line in re.findall(r"install -d[^\n]*(?:\\\n[^\n]*)*", _dockerfile())
        if "-o pacsflow" in line
        for path in re.findall(r"\s(/\S+)", line)
    }
    document = compose_document()
    declared = set(document.get("volumes") or {})
    for name, service in pacsflow_services(document).items():
        for entry in service.get("volumes", []):
            source, target = entry.split(":")[:2]
            if source in declared:
                assert target in owned, f"{name}: compose/Dockerfile does not make {target} pacsflow's"


def test_nginx_runs_as_the_user_that_owns_the_storage() -> None:
    uid = re.search(r"--uid (\d+)", _dockerfile())
    gid = re.search(r"--gid (\d+)", _dockerfile())
    assert uid and gid
    assert compose_document()["services"]["nginx"]["user"] == f"{uid[1]}:{gid[1]}"


def test_grafana_provisions_the_datasource_and_dashboards_it_mounts() -> None:
    grafana = compose_document()["services"]["grafana"]
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["uid"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "pacsflow.yml").read_text())["providers"]
    mounted = dict(entry.split(":")[:2] for entry in grafana["volumes"])
    assert mounted["./grafana/dashboards"] == provider["options"]["path"]
    assert mounted["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards = sorted((COMPOSE_DIR / "grafana" / "dashboards").glob("*.json"))
    assert dashboards, "no dashboard in compose/grafana/dashboards"
    for dashboard in dashboards:
        named = _datasources(json.loads(dashboard.read_text()))
        assert named <= {source["uid"]}, f"{dashboard.name} names datasources not provisioned: {named}"


def _datasources(node: Any) -> set[str]:
    """The uids of the datasources a dashboard's panels and queries name; Grafana's built-in ones
    (annotations, mixed) are always there."""
    if isinstance(node, list):
        return set().union(*map(_datasources, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    source = node.get("datasource")
    built_in = isinstance(source, dict) and source.get("type") in ("grafana", "datasource")
    found = {source["uid"]} if isinstance(source, dict) and not built_in else set()
    return found.union(*map(_datasources, node.values()))
