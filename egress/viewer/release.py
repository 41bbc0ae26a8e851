"""The pinned OHIF release and where ``make install`` puts it."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
# The registry's own digest of the tarball (`npm view @ohif/app@3.13.2 dist.integrity`): a tarball
# that does not match is refused, whoever served it.
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
COMPLETE = ".complete"
"""Written last by the installer: a folder without it is a broken install, not a viewer."""


def installed_dir(prefix: str = sys.prefix) -> Path:
    """Beside the Python environment pacsflow runs from (``.venv`` or the image's ``/usr/local``):
    every process of one install finds the same files, and ``make clean`` removes them."""
    return Path(prefix) / "share" / "pacsflow" / f"ohif-{VERSION}"


def is_installed(folder: Path) -> bool:
    return (folder / COMPLETE).is_file() and (folder / "index.html").is_file()
