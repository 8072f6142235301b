"""A local HTTP file server for download tests: Range requests (resume), a response cut short on
demand (a link dying mid-download) and a gate that holds responses (a slow download)."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path
from typing import Any


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the connections these tests cut on purpose are not errors worth a traceback


class FileServer:
    """Serves `files` (name → bytes) and, when given, the files under `root`.

    `cut_once[name] = n` sends only the first n bytes (None: half) of the next response for `name`,
    then drops the connection; `requests` records (path, Range header) of every request.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int | None] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.gate.wait(30)
                owner.requests.append((self.path, self.headers.get("Range")))
                name = self.path.lstrip("/")
                data = owner.read(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in owner.cut_once:
                    cut = owner.cut_once.pop(name)
                    self.wfile.write(body[: len(body) // 2 if cut is None else cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the link dies mid-download
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="file-server", daemon=True).start()

    def read(self, name: str) -> bytes | None:
        if name in self.files:
            return self.files[name]
        if self.root is None:
            return None
        path = (self.root / name).resolve()
        if not path.is_file() or self.root.resolve() not in path.parents:
            return None
        return path.read_bytes()

    def url_for(self, name: str) -> str:
        return f"{self.url}/{name}"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
