"""A MariaDB of the tests' own: the MySQL-protocol server `pacsflow doris apply` is tested against
for the statements MariaDB and Doris both accept (it is not a Doris, and the tests say so)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.services import free_port, port_open, require, wait_for

MARIADBD = Path("/usr/sbin/mariadbd")
INSTALL_DB = Path("/usr/bin/mariadb-install-db")
USER = "pacsflow"
# Small: the tests create a few empty tables, and the machine is shared.
_SMALL = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M"]


class MariaDBServer:
    """mariadbd on 127.0.0.1 and a free port, its data and socket in ``folder``, with a user
    ``pacsflow`` whose password is checked (the wrong-password test needs a server that checks)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.datadir = folder / "data"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.log_path = folder / "mariadbd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mysql://user:password@host:port`` with no database: each test adds its own."""
        return f"mysql://{USER}:{self.password}@127.0.0.1:{self.port}"

    def _as_user(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; as anyone else the option is ignored.
        return [f"--user={pwd.getpwuid(os.geteuid()).pw_name}"]

    def start(self) -> MariaDBServer:
        require(
            MARIADBD.exists() and INSTALL_DB.exists(),
            "Debian's mariadb-server (make test installs it: apt-get install mariadb-server)",
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            [
                str(INSTALL_DB),
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
                *self._as_user(),
                *_SMALL,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert installed.returncode == 0, f"mariadb-install-db failed: {installed.stdout}{installed.stderr}"
        init = self.folder / "init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{self.password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%';\n"
        )
        self.process = subprocess.Popen(
            [
                str(MARIADBD),
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.folder / 'mariadbd.sock'}",
                f"--pid-file={self.folder / 'mariadbd.pid'}",
                f"--log-error={self.log_path}",
                # Clients are matched by address, so '%' takes 127.0.0.1 whatever /etc/hosts says.
                "--skip-name-resolve",
                f"--init-file={init}",
                "--skip-log-bin",
                *self._as_user(),
                *_SMALL,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: port_open(self.port) or self.process.poll() is not None,  # type: ignore[union-attr]
            30,
            "mariadbd to listen",
        )
        assert self.process.poll() is None, self.log_path.read_text()[-2000:]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None


@contextmanager
def mysql_server() -> Iterator[str]:
    """The URL (no database) of the server ``TEST_MYSQL_URL`` names (its user may create and drop
    databases), or of a MariaDB started here and removed afterwards."""
    if url := os.environ.get("TEST_MYSQL_URL"):
        parts = urlsplit(url)
        yield f"{parts.scheme}://{parts.netloc}"
        return
    # Not under pytest's basetemp, which another pytest session may prune under a running server.
    folder = Path(tempfile.mkdtemp(prefix="pacsflow-test-mariadb-"))
    server = MariaDBServer(folder)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
