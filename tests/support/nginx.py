"""Debian's nginx in front of `pacsflow web` processes, configured by `pacsflow nginx-config` as
compose configures its own, on free loopback ports."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.services import free_port, pacsflow, port_open, require, wait_for

NGINX = Path("/usr/sbin/nginx")


def require_nginx() -> None:
    require(NGINX.exists(), "Debian's nginx (make test installs it: apt-get install nginx)")


class Nginx:
    """nginx run from the folder `pacsflow nginx-config` wrote: its access log (one line a request,
    naming the upstream that answered) and its error log are files of the test."""

    def __init__(self, folder: Path, http_port: int | None = None, https_port: int | None = None) -> None:
        self.folder = folder
        self.http_port = http_port or free_port()
        self.https_port = https_port or free_port()
        self.access_log = folder / "access.log"
        self.error_log = folder / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def cert(self) -> Path:
        return self.folder / "tls" / "cert.pem"

    def configure(self, upstreams: Sequence[int], env: Mapping[str, str], *extra: str) -> Path:
        """Write the configuration with `pacsflow nginx-config`, the command compose runs, for the
        web processes on ``upstreams`` (ports) whose settings are ``env``."""
        args = ["nginx-config", "--out", str(self.folder)]
        for port in upstreams:
            args += ["--upstream", f"127.0.0.1:{port}"]
        args += ["--http-port", str(self.http_port), "--https-port", str(self.https_port)]
        if os.geteuid() == 0:
            # Workers as nobody could not read the test's folders (pytest makes them 0700).
            args += ["--user", "root"]
        done = pacsflow(*args, *extra, env=env)
        assert done.returncode == 0, done.stderr
        return self.folder / "nginx.conf"

    def start(self) -> Nginx:
        require_nginx()
        conf = self.folder / "nginx.conf"
        with self.access_log.open("ab") as out, self.error_log.open("ab") as err:
            process = subprocess.Popen(
                [str(NGINX), "-c", str(conf), "-g", "daemon off;"], stdout=out, stderr=err
            )
        self.process = process
        wait_for(
            lambda: (port_open(self.https_port) and port_open(self.http_port)) or process.poll() is not None,
            15,
            "nginx to listen",
        )
        assert process.poll() is None, self.errors()[-3000:]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: requests in flight finish
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def trusting(self) -> ssl.SSLContext:
        """A client context that trusts this nginx's self-signed certificate, and no other."""
        return ssl.create_default_context(cafile=str(self.cert))

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace")

    def requests_log(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines()
