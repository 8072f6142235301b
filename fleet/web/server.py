"""The operators' page over HTTP: stdlib `http.server`, GET only, a bounded number of clients.

Access follows the node's status page (agent/web): loopback only unless a token is set, and a token is
required for any other address. Every request then carries it (`Authorization: Bearer …`,
`X-Vigil-Token`, or the `vigil_token` cookie); opening any page once with `?token=…` sets the cookie
(HttpOnly, SameSite=Strict) and redirects to the address without the token.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import socket
import socketserver
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from fleet.web import page
from fleet.web.metrics import CONTENT_TYPE as METRICS_TYPE
from fleet.web.metrics import MetricsEndpoint
from fleet.web.site import Site
from fleet.wire import EVENT_ID, NODE_ID

log = logging.getLogger(__name__)

COOKIE = "vigil_token"
COOKIE_MAX_AGE_S = 7 * 86400


def security_headers(img_origin: str | None) -> dict[str, str]:
    images = "'self'" + (f" {img_origin}" if img_origin else "")
    return {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": f"default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'",
    }


@dataclass
class WebApp:
    token: str | None
    site: Site
    metrics: MetricsEndpoint
    headers: dict[str, str]
    unauthorized: int = 0
    requests: int = 0


class Handler(http.server.BaseHTTPRequestHandler):
    server: FleetHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "vigil-fleet"
    sys_version = ""
    timeout = 20.0

    @property
    def app(self) -> WebApp:
        return self.server.app

    def log_message(self, format: str, *args: Any) -> None:
        safe = [a.split("?", 1)[0] + (" …" if "?" in a else "") if isinstance(a, str) else a for a in args]
        log.debug("http %s: " + format, self.address_string(), *safe)

    # -- access ------------------------------------------------------------------------------------
    def _allowed(self, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """(allowed, set the cookie now)."""
        token = self.app.token
        if token is None:
            return True, False
        presented: list[str] = []
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            presented.append(auth[7:].strip())
        if self.headers.get("X-Vigil-Token"):
            presented.append(self.headers["X-Vigil-Token"].strip())
        raw_cookie = self.headers.get("Cookie")
        if raw_cookie:
            try:
                jar = SimpleCookie(raw_cookie)
            except CookieError:
                jar = SimpleCookie()
            if COOKIE in jar:
                presented.append(jar[COOKIE].value)
        expected = token.encode()
        if any(hmac.compare_digest(p.encode(), expected) for p in presented):
            return True, False
        from_query = query.get("token", [None])[0]
        if from_query is not None and hmac.compare_digest(from_query.encode(), expected):
            return True, True
        return False, False

    # -- plumbing ----------------------------------------------------------------------------------
    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in {**self.app.headers, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, "application/json", json.dumps(data, separators=(",", ":"), default=str).encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only\n", {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def do_GET(self) -> None:
        self.app.requests += 1
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        allowed, set_cookie = self._allowed(query)
        if not allowed:
            self.app.unauthorized += 1
            self.close_connection = True
            if url.path in ("/", "/index.html"):
                self._send(
                    HTTPStatus.UNAUTHORIZED, "text/html; charset=utf-8", page.asset("unauthorized.html")
                )
            else:
                self._json({"error": "token required"}, HTTPStatus.UNAUTHORIZED)
            return
        if set_cookie:
            rest = {k: v for k, v in query.items() if k != "token"}
            target = url.path + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            cookie = (
                f"{COOKIE}={self.app.token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}"
            )
            self._send(HTTPStatus.SEE_OTHER, "text/plain", b"", {"Location": target, "Set-Cookie": cookie})
            return
        try:
            self._route(url.path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("http: %s failed", url.path)
            self._json(
                {"error": "the database could not be read; see the server's log"},
                HTTPStatus.SERVICE_UNAVAILABLE,
            )

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        site = self.app.site
        if path in page.ASSETS:
            name, content_type = page.ASSETS[path]
            self._send(200, content_type, page.asset(name))
        elif path == "/api/fleet.json":
            self._json(site.fleet())
        elif path == "/api/events.json":
            node = query.get("node", [None])[0]
            try:
                limit = max(1, min(200, int(query.get("limit", ["30"])[0])))
            except ValueError:
                limit = 30
            self._json({"events": site.events(node if node and NODE_ID.match(node) else None, limit)})
        elif path.startswith("/api/node/") and path.endswith(".json"):
            node = unquote(path[len("/api/node/") : -len(".json")])
            detail = site.node(node) if NODE_ID.match(node) else None
            if detail is None:
                self._json({"error": "no such node"}, HTTPStatus.NOT_FOUND)
            else:
                self._json(detail)
        elif path == "/map.svg":
            self._send(200, "image/svg+xml; charset=utf-8", site.map_svg().encode())
        elif path.startswith("/thumbs/") and path.endswith(".jpg"):
            self._thumb(path[len("/thumbs/") : -len(".jpg")])
        elif path == "/metrics":
            self._send(200, METRICS_TYPE, self.app.metrics.render())
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, "image/x-icon", b"")
        else:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _thumb(self, event_id: str) -> None:
        found = self.app.site.thumb(event_id) if EVENT_ID.match(event_id) else None
        if found is None or found[1] == "pending":  # unchecked until its event arrives
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            return
        jpeg, state = found
        self._send(
            200, "image/jpeg", jpeg, {"Cache-Control": "private, max-age=86400", "X-Thumb-State": state}
        )


class FleetHTTPServer(http.server.ThreadingHTTPServer):
    """Named, bounded worker threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: WebApp, max_clients: int) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(max_clients)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        threading.Thread(
            target=self._serve_one, args=(request, client_address), name="fleet-web-client", daemon=True
        ).start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: error serving %s", client_address, exc_info=True)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
