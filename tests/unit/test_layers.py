"""Every package and module of pacsflow has its place in the import-linter layers contract."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layered() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = (c["layers"] for c in config["contracts"] if c["type"] == "layers")
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def test_every_top_level_module_is_in_a_layer() -> None:
    found = {"ingress", "egress", "doris", "analytics"}
    for path in (ROOT / "pipeline").iterdir():
        if path.name.startswith(("_", ".")) and path.name != "__main__.py":
            continue
        if path.suffix == ".py" or (path / "__init__.py").exists():
            found.add(f"pipeline.{path.stem}")
    missing = found - _layered()
    assert not missing, f"place these in the layers contract in pyproject.toml: {sorted(missing)}"


def test_the_web_server_and_the_scp_do_not_load_faust() -> None:
    probe = (
        "import sys, egress.wado.app, ingress.scp.server; "
        "print(sorted(m for m in ('faust', 'mode') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
