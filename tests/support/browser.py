"""Where the browser tests find chromium, their pinned npm tools and their results folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BROWSER = Path(__file__).parents[1] / "browser"
RESULTS = BROWSER / "results"
CHROMIUM = Path("/usr/bin/chromium")


def node_major() -> int:
    """Node's major version; 0 when there is no node."""
    node = shutil.which("node")
    if node is None:
        return 0
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    return int(version.lstrip("v").split(".")[0] or 0)
