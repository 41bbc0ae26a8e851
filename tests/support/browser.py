"""Where the browser tests find chromium, their pinned npm tools and their results folder; what they
require, and how they run a script of tests/browser and read its report."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egress.viewer.release import installed_dir, is_installed
from tests.support.services import require

BROWSER = Path(__file__).parents[1] / "browser"
RESULTS = BROWSER / "results"
CHROMIUM = Path("/usr/bin/chromium")


@dataclass(frozen=True)
class ViewerStudy:
    """A CT series of one study, made up for a test, that the test then looks for in OHIF."""

    patient: str  # Family^Given
    slices: int
    study: str
    series: str

    @property
    def listed_as(self) -> str:
        """How OHIF's study list writes the name."""
        family, given = self.patient.split("^")
        return f"{family}, {given}"


def node_major() -> int:
    """Node's major version; 0 when there is no node."""
    node = shutil.which("node")
    if node is None:
        return 0
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    return int(version.lstrip("v").split(".")[0] or 0)


def require_browser() -> None:
    """Chromium, and Node.js with playwright-core to drive it."""
    require(CHROMIUM.exists(), "Debian's chromium (make test installs it: apt-get install chromium)")
    require(node_major() >= 18, "Node.js 18 or later (make test installs Debian's npm)")
    require((BROWSER / "node_modules" / "playwright-core").is_dir(), "playwright-core (make test)")


def require_viewer() -> None:
    """What `require_browser` requires, and the OHIF viewer to drive."""
    require_browser()
    require(is_installed(installed_dir()), "the OHIF viewer (make install)")


def run_script(script: str, run: str, job: Mapping[str, object], timeout: float) -> dict[str, Any]:
    """Runs ``tests/browser/<script>`` on ``job`` with its results in ``RESULTS/<run>`` (emptied
    first), and returns its report, also saved there as report.json. The script catches what goes
    wrong in the browser into the report's ``error``: that fails here, with the steps it got through."""
    out = RESULTS / run
    shutil.rmtree(out, ignore_errors=True)
    argument = json.dumps({**job, "out": str(out), "chromium": str(CHROMIUM)})
    result = subprocess.run(
        ["node", str(BROWSER / script), argument], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    (out / "report.json").write_text(json.dumps(report, indent=1))
    assert "error" not in report, f"{report['error']}\nsteps: {report['steps']}"
    return report
