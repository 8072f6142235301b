"""`FleetWeb`: the operators' page as one lifecycle object (start/stop), used by `vigil-fleet serve`
and by the tests."""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from agent.config.control import is_loopback, parse_listen
from fleet.errors import FleetError
from fleet.identity import InventoryWatch
from fleet.store.db import DbUrl
from fleet.web.metrics import MetricsEndpoint
from fleet.web.server import FleetHTTPServer, WebApp, security_headers
from fleet.web.site import DbPool, Site

log = logging.getLogger(__name__)


class FleetWeb:
    name = "fleet-web"

    def __init__(
        self,
        db: DbUrl,
        listen: str,
        *,
        token: str | None = None,
        inventory: InventoryWatch | None = None,
        fleet_name: str = "Vigil fleet",
        tiles: str | None = None,
        attribution: str = "",
        silent_after_s: float | None = None,
        max_clients: int = 16,
    ) -> None:
        try:
            address = parse_listen(listen)
        except ValueError as exc:
            raise FleetError(f"--http {exc}") from None
        if address is None:
            raise FleetError("--http must be [ADDR:]PORT")
        host, port = address
        if token is not None and len(token) < 16:
            raise FleetError("the token must have at least 16 characters")
        if not is_loopback(host) and token is None:
            raise FleetError(
                f"--http {listen} is reachable from other machines: give --token-file (or $VIGIL_FLEET_TOKEN)"
            )
        tile_origin = None
        if tiles:
            parts = urlsplit(tiles)
            if parts.scheme not in ("http", "https") or not parts.netloc or "{z}" not in tiles:
                raise FleetError(
                    f"--tiles {tiles!r} must be an http(s) URL template with {{z}}, {{x}} and {{y}}"
                )
            tile_origin = f"{parts.scheme}://{parts.netloc}"
        self.pool = DbPool(db, max_clients)
        site = Site(self.pool, inventory, fleet_name, tiles, attribution)
        if silent_after_s is not None:
            site.silent_after_s = silent_after_s
        self.app = WebApp(
            token,
            site,
            MetricsEndpoint(site.metrics, lambda: self.app.unauthorized),
            security_headers(tile_origin),
        )
        try:
            self.server = FleetHTTPServer((host, port), self.app, max_clients)
        except OSError as exc:
            raise FleetError(f"cannot serve on {listen}: {exc.strerror or exc}") from None
        bound_host, bound_port = str(self.server.server_address[0]), int(self.server.server_address[1])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/"
        self.loopback = is_loopback(host)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> FleetWeb:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.25}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self.server.server_close()
        self.pool.close()
