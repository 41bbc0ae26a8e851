"""`python -m egress.viewer.install`, as `make install` runs it, on tarballs made here.

The real release, fetched by `make install`, is what tests/e2e/test_viewer.py drives."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from egress.viewer import install
from egress.viewer.release import VERSION


def _tarball(path: Path, files: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    return path


def _run(*args: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egress.viewer.install", *args],
        capture_output=True,
        text=True,
        env={"PATH": path},
        timeout=60,
    )


def test_without_npm_nothing_is_installed_and_the_fix_is_named(tmp_path: Path) -> None:
    result = _run("--target", str(tmp_path / "ohif"), path=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "npm not found, so OHIF is not installed" in result.stdout
    assert "run `make install` again" in result.stdout
    assert not (tmp_path / "ohif").exists()


def test_a_tarball_that_is_not_the_pinned_release_is_refused(tmp_path: Path) -> None:
    fake = _tarball(tmp_path / "ohif-app.tgz", {"package/dist/index.html": b"<!doctype html>"})
    result = _run("--tarball", str(fake), "--target", str(tmp_path / "ohif"))
    assert result.returncode == 1
    assert f"is not the pinned @ohif/app@{VERSION}" in result.stderr
    assert "npm cache clean" in result.stderr
    assert not (tmp_path / "ohif").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ohif-app.tgz"]  # no scratch folder left


def test_only_dist_is_unpacked_links_never_and_big_text_gets_a_gzip_twin(tmp_path: Path) -> None:
    bundle = b"console.log('ohif');" * 500
    tarball = _tarball(
        tmp_path / "ohif-app.tgz",
        {
            "package/package.json": b"{}",
            "package/dist/index.html": b"<!doctype html>",
            "package/dist/app.bundle.0f6159c501addfe9.js": bundle,
            "package/dist/assets/logo.png": b"\x89PNG" + bytes(4000),
        },
        link="package/dist/passwd",
    )
    into = tmp_path / "dist"
    install.unpack(tarball, into)
    assert sorted(str(p.relative_to(into)) for p in into.rglob("*")) == [
        "app.bundle.0f6159c501addfe9.js",
        "assets",
        "assets/logo.png",
        "index.html",
    ]
    assert install.precompress(into) == 1  # the bundle; the PNG is not text, the page is small
    assert gzip.decompress((into / "app.bundle.0f6159c501addfe9.js.gz").read_bytes()) == bundle


def test_a_tarball_without_a_built_viewer_or_with_a_way_out_is_refused(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "ohif-app.tgz", {"package/src/index.js": b""})
    with pytest.raises(install.InstallError, match=r"has no package/dist/index\.html"):
        install.unpack(tarball, tmp_path / "dist")
    escape = _tarball(tmp_path / "escape.tgz", {"package/dist/index.html": b"", "package/dist/../../x": b""})
    with pytest.raises(install.InstallError, match="points outside its folder"):
        install.unpack(escape, tmp_path / "dist")
    assert not (tmp_path / "x").exists()


def test_unpacked_files_are_dated_now_not_as_npm_dates_them(tmp_path: Path) -> None:
    # npm's tarballs date every file 1985-10-26; aiohttp's ETags are date and size.
    tarball = _tarball(tmp_path / "ohif-app.tgz", {"package/dist/index.html": b"<!doctype html>"})
    before = time.time() - 1
    install.unpack(tarball, tmp_path / "dist")
    assert (tmp_path / "dist" / "index.html").stat().st_mtime >= before
