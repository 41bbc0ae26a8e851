"""A plain static web server on its own port: another origin, as a hospital's own OHIF would be."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(SimpleHTTPRequestHandler):
    overrides: dict[str, bytes]
    root: Path

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self.overrides.get(path)
        if (
            body is None
            and not (self.root / path.lstrip("/")).exists()
            and "." not in path.rsplit("/", 1)[-1]
        ):
            body = (self.root / "index.html").read_bytes()  # a single-page application's route
        if body is None:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/javascript" if path.endswith(".js") else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticSite:
    """Serves ``root``, with ``overrides`` (path -> bytes) in place of files, until ``stop``."""

    def __init__(self, root: Path, port: int, overrides: dict[str, bytes]) -> None:
        handler = type("Handler", (_Handler,), {"overrides": overrides, "root": root})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(root)))
        self.origin = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
