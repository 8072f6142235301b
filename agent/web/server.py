"""The status page's HTTP server: stdlib `http.server`, GET only, a bounded number of connections.

Access: bound to loopback by default. With a token configured (required for any other address)
every request must carry it: `Authorization: Bearer <token>` or `X-Vigil-Token` (scripts,
Prometheus), or a `vigil_token` cookie. Opening any page once with `?token=<token>` sets that
cookie (HttpOnly, SameSite=Strict) and redirects to the same page without the token in the address,
so a technician opens one link on the phone and the page keeps working.

Before any of that, the Host header must name this node (DNS rebinding), and agent.web.guard decides
who holds a connection: a total deadline for the request head, a cap per client address, serving
slots only for requests that passed the access check, and a throttle on wrong tokens.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from agent.web import page
from agent.web.guard import ConnectionGuard, Ticket, host_allowed
from agent.web.metrics import CONTENT_TYPE as METRICS_TYPE
from agent.web.preview import PreviewRenderer

log = logging.getLogger(__name__)

COOKIE = "vigil_token"
COOKIE_MAX_AGE_S = 7 * 86400
EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
LONG_POLL_S = 5.0
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'",
}


@dataclass
class WebApp:
    """What the handler serves; built by agent.web.stage."""

    token: str | None
    status: Callable[[], dict[str, Any]]
    metrics: Callable[[], bytes]
    preview: PreviewRenderer
    thumbs: Callable[[str], bytes | None]  # an event id's thumbnail, kept in memory (None: not kept)
    stopping: threading.Event
    host_names: frozenset[str] = frozenset({"localhost"})  # besides IP addresses (see guard.host_allowed)
    unauthorized: int = 0
    requests: int = 0
    wrong_host: int = 0


class Handler(http.server.BaseHTTPRequestHandler):
    server: StatusHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "vigil"
    sys_version = ""
    timeout = 20.0  # per read; the guard's head deadline bounds a whole request head

    @property
    def app(self) -> WebApp:
        return self.server.app

    def setup(self) -> None:
        super().setup()
        self.ticket: Ticket | None = self.server.guard.ticket(self.request)

    def handle_one_request(self) -> None:
        if self.ticket is not None:
            self.server.guard.reading(self.ticket)  # the head deadline starts with every request
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        # the request line may carry ?token=…: log the path without its query string
        safe = [a.split("?", 1)[0] + (" …" if "?" in a else "") if isinstance(a, str) else a for a in args]
        log.debug("http %s: " + format, self.address_string(), *safe)

    # -- access ------------------------------------------------------------------------------------
    def _presented_tokens(self, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        found: list[str] = []
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            found.append(auth[7:].strip())
        if self.headers.get("X-Vigil-Token"):
            found.append(self.headers["X-Vigil-Token"].strip())
        raw_cookie = self.headers.get("Cookie")
        if raw_cookie:
            try:
                jar = SimpleCookie(raw_cookie)
            except CookieError:
                jar = SimpleCookie()
            if COOKIE in jar:
                found.append(jar[COOKIE].value)
        from_query = query.get("token", [None])[0]
        return found, from_query

    def _allowed(self, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """(allowed, set the cookie now)."""
        token = self.app.token
        if token is None:
            return True, False
        presented, from_query = self._presented_tokens(query)
        expected = token.encode()
        if any(hmac.compare_digest(p.encode(), expected) for p in presented):
            return True, False
        if from_query is not None and hmac.compare_digest(from_query.encode(), expected):
            return True, True
        if presented or from_query is not None:
            self.server.guard.failed(self.client_address[0])
        return False, False

    def _begin(self) -> bool:
        """Every request, once its head is in: still wanted, for this host, not from a throttled guesser."""
        guard = self.server.guard
        if self.ticket is not None and not guard.head_done(self.ticket):
            self.close_connection = True  # cut for being too slow: nobody is listening any more
            return False
        if not host_allowed(self.headers.get("Host"), self.app.host_names):
            self.app.wrong_host += 1
            self.close_connection = True
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", b"this node is not known by that name\n")
            return False
        if self.app.token is not None:
            wait = guard.throttled(self.client_address[0])
            if wait is not None:
                self.close_connection = True
                retry = {"Retry-After": str(max(1, round(wait)))}
                self._send(HTTPStatus.TOO_MANY_REQUESTS, "text/plain", b"too many wrong tokens\n", retry)
                return False
        return True

    # -- plumbing ----------------------------------------------------------------------------------
    def _headers(self, status: int, content_type: str, length: int | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self._headers(status, content_type, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, "application/json", json.dumps(data, separators=(",", ":"), default=str).encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if self._begin():
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only\n", {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def do_GET(self) -> None:
        self.app.requests += 1
        if not self._begin():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        allowed, set_cookie = self._allowed(query)
        if not allowed:
            self.app.unauthorized += 1
            self.close_connection = True
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.UNAUTHORIZED, "text/html; charset=utf-8", page.unauthorized())
            else:
                self._json({"error": "token required"}, HTTPStatus.UNAUTHORIZED)
            return
        if set_cookie:
            rest = {k: v for k, v in query.items() if k != "token"}
            target = url.path + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            cookie = f"{COOKIE}={self.app.token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}"
            self._send(HTTPStatus.SEE_OTHER, "text/plain", b"", {"Location": target, "Set-Cookie": cookie})
            return
        guard = self.server.guard
        if self.ticket is not None and not guard.serve(self.ticket):
            self.close_connection = True
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"busy\n", {"Retry-After": "2"})
            return
        try:
            self._route(url.path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        finally:
            if self.ticket is not None:
                guard.served(self.ticket)

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        if path in page.ASSETS:
            name, content_type = page.ASSETS[path]
            self._send(200, content_type, page.asset(name))
        elif path == "/status.json":
            self._json(self.app.status())
        elif path == "/metrics":
            self._send(200, METRICS_TYPE, self.app.metrics())
        elif path == "/preview.jpg":
            self._preview_jpeg(query)
        elif path == "/preview.mjpeg":
            self._preview_stream()
        elif path.startswith("/thumbs/") and path.endswith(".jpg"):
            self._thumb(path[len("/thumbs/") : -len(".jpg")])
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, "image/x-icon", b"")
        else:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _preview_jpeg(self, query: dict[str, list[str]]) -> None:
        try:
            after = int(query.get("after", ["0"])[0])
        except ValueError:
            after = 0
        image = self.app.preview.get(after, LONG_POLL_S)
        if image is None:
            self._send(HTTPStatus.NO_CONTENT, "image/jpeg", b"")
            return
        self._send(200, "image/jpeg", image.jpeg, {
            "X-Frame-Seq": str(image.seq),
            "X-Frame-Index": str(image.frame_index),
            "X-Frame-Age": f"{max(0.0, time.monotonic() - image.frame_mono):.2f}",
        })

    def _preview_stream(self) -> None:
        """multipart/x-mixed-replace for VLC, ffplay or an <img>: one part per new preview image."""
        boundary = "vigilframe"
        self.close_connection = True
        self._headers(200, f"multipart/x-mixed-replace; boundary={boundary}", None, {"Connection": "close"})
        if self.command == "HEAD":
            return
        seq = 0
        while not self.app.stopping.is_set():
            image = self.app.preview.get(seq, LONG_POLL_S)
            if image is None:
                continue
            seq = image.seq
            head = f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(image.jpeg)}\r\n\r\n"
            self.wfile.write(head.encode() + image.jpeg + b"\r\n")
            self.wfile.flush()

    def _thumb(self, event_id: str) -> None:
        if not EVENT_ID.fullmatch(event_id):
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            return
        data = self.app.thumbs(event_id)
        if data is None:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            return
        self._send(200, "image/jpeg", data, {"Cache-Control": "private, max-age=86400"})


class StatusHTTPServer(http.server.ThreadingHTTPServer):
    """Named worker threads, one per admitted connection, bounded by the guard (a Pi must not grow a
    thread per stuck phone); `serve_forever` reaps connections past their head deadline."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: WebApp, guard: ConnectionGuard) -> None:
        self.app = app
        self.guard = guard
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        ticket = self.guard.admit(request, str(client_address[0]))
        if ticket is None:
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        threading.Thread(
            target=self._serve_one, args=(request, client_address, ticket), name="web-client", daemon=True
        ).start()

    def _serve_one(self, request: Any, client_address: Any, ticket: Ticket) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.guard.release(ticket)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        self.guard.reap()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: error serving %s", client_address, exc_info=True)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
