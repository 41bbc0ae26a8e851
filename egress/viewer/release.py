"""The pinned browser releases ``make install`` fetches (OHIF, Chart.js) and where it puts them."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

COMPLETE = ".complete"
"""Written last by the installer: a folder without it is a broken install, not a release."""


@dataclass(frozen=True)
class Release:
    """One npm package whose prebuilt ``dist/`` is served as it is: nothing is built."""

    key: str
    """What ``python -m egress.viewer.install --only`` calls it."""
    label: str
    package: str
    version: str
    integrity: str
    """The registry's own digest of the tarball (``npm view <package>@<version> dist.integrity``):
    a tarball that does not match is refused, whoever served it."""
    entry: str
    """The file of ``dist/`` without which the folder is not this release."""
    files: tuple[str, ...] | None
    """The files of ``dist/`` that are served; ``None``: all of them."""
    size: str
    without: str
    """What pacsflow does while the release is missing, said when npm is not there to fetch it."""

    def installed_dir(self, prefix: str = sys.prefix) -> Path:
        """Beside the Python environment pacsflow runs from (``.venv`` or the image's
        ``/usr/local``): every process of one install finds the same files, and ``make clean``
        removes them."""
        return Path(prefix) / "share" / "pacsflow" / f"{self.key}-{self.version}"

    def is_installed(self, folder: Path) -> bool:
        return (folder / COMPLETE).is_file() and (folder / self.entry).is_file()


OHIF = Release(
    key="ohif",
    label="OHIF",
    package="@ohif/app",
    version="3.13.2",
    integrity="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==",
    entry="index.html",
    files=None,
    size="about 50 MB",
    without="pacsflow serves DICOMweb all the same and its / page says how to add the viewer",
)
CHARTS = Release(
    key="chartjs",
    label="Chart.js",
    package="chart.js",
    version="4.5.1",
    integrity="sha512-GIjfiT9dbmHRiYi6Nl2yFCq7kkwdkp1W/lp2J99rX0yo9tgJGn3lKQATztIjb5tVtevcBtIdICNWqlq5+E8/Pw==",
    # The UMD build: one classic script that defines ``window.Chart``, loaded without a bundler.
    entry="chart.umd.js",
    files=("chart.umd.js",),
    size="about 1.6 MB",
    without="the /analytics page shows its tables without charts and says how to add them",
)
RELEASES = {release.key: release for release in (OHIF, CHARTS)}

# OHIF's, by the names the viewer's site and its tests use.
PACKAGE = OHIF.package
VERSION = OHIF.version
INTEGRITY = OHIF.integrity


def installed_dir(prefix: str = sys.prefix) -> Path:
    return OHIF.installed_dir(prefix)


def is_installed(folder: Path) -> bool:
    return OHIF.is_installed(folder)
