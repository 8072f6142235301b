"""The status page stage: `--http [ADDR:]PORT` or `[http] listen`; `agent --simulate` serves it on a free
loopback port by default and prints its URL in one log line."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config.control import is_loopback, parse_listen
from agent.errors import AgentError
from agent.events import EVENTS_STREAM
from agent.health.status import camera_flags
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.uplink.spool import Record
from agent.web.guard import ConnectionGuard, own_names
from agent.web.metrics import MetricsEndpoint
from agent.web.preview import PreviewRenderer
from agent.web.server import StatusHTTPServer, WebApp

if TYPE_CHECKING:
    from agent.app import Agent, Running
    from agent.config.control import HttpConfig
    from agent.config.schema import Config

log = logging.getLogger(__name__)

EVENT_FIELDS = ("id", "seq", "type", "priority", "label", "track", "score", "ts", "zone", "rule", "reason")


class RecentEvents:
    """Spool listener keeping the last few committed events for the page (what was accepted, in order)."""

    def __init__(self, size: int) -> None:
        self._events: deque[tuple[float, dict[str, Any]]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, records: list[Record]) -> None:
        fresh = []
        for record in records:
            if record.stream != EVENTS_STREAM or record.body is None:
                continue
            body = record.body
            item = {k: body[k] for k in EVENT_FIELDS if body.get(k) is not None}
            item["thumb"] = bool(body.get("thumb"))
            fresh.append((time.monotonic(), item))
        if fresh:
            with self._lock:
                self._events.extend(fresh)

    def latest(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            items = list(self._events)
        return [{**item, "age_s": round(now - at, 1)} for at, item in reversed(items)]


class WebStage:
    name = "web"

    def __init__(self, server: StatusHTTPServer, app: WebApp, preview: PreviewRenderer, url: str) -> None:
        self.server = server
        self.app = app
        self.preview = preview
        self.url = url
        self._loop = BackgroundLoop("web", lambda _loop: self.server.serve_forever(poll_interval=0.25))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> WebStage:
        self._loop.start()
        return self

    def stop(self, deadline: float | None = None) -> None:
        deadline = resolve_deadline(deadline)
        self.app.stopping.set()
        self._loop.request_stop()
        self.preview.stop()
        if self._loop.alive():
            self.server.shutdown()  # serve_forever returns within its poll interval
            self._loop.join(deadline)
        self.server.server_close()

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "requests": self.app.requests,
            "unauthorized": self.app.unauthorized,
            "wrong_host": self.app.wrong_host,
            "connections": self.server.guard.counts(),
            **self.server.guard.stats.as_dict(),
            "preview_images": self.preview.encoded,
        }


def read_token(cfg: HttpConfig) -> str | None:
    """The status page's token: from `http.token_file` when set (kept out of the config file), else `http.token`."""
    if cfg.token_file is not None:
        try:
            token = Path(cfg.token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AgentError(f"cannot read http.token_file {cfg.token_file}: {exc}") from None
        if len(token) < 16:
            raise AgentError(f"http.token_file {cfg.token_file} holds fewer than 16 characters")
        return token
    return cfg.token


def build(agent: Agent, running: Running) -> WebStage | None:
    cfg = agent.config.http
    listen = cfg.listen or ("127.0.0.1:0" if agent.options.simulate else "")
    address = parse_listen(listen)
    if address is None:
        return None
    health = running.services.health
    if health is None:
        return None
    token = read_token(cfg)
    host, port = address
    if not is_loopback(host) and token is None:  # the schema checks this too; a token file may be empty
        raise AgentError(f"http.listen = {listen!r} is reachable from other machines: set http.token")
    recent = RecentEvents(cfg.recent_events)
    running.spool.add_listener(recent)
    preview = PreviewRenderer(health.tap, health.privacy, lambda: agent.config)

    def status() -> dict[str, Any]:
        full = health.collector.full()
        full["camera"] = camera_flags(full["stages"])
        full["recent_events"] = recent.latest()
        return full

    metrics = MetricsEndpoint(health.collector.full, lambda: app.unauthorized)
    app = WebApp(
        token=token,
        status=status,
        metrics=metrics.render,
        preview=preview,
        thumbs=running.thumbnails.get if running.thumbnails is not None else lambda _id: None,
        stopping=threading.Event(),
        host_names=own_names() | frozenset(cfg.allowed_hosts),
    )
    guard = ConnectionGuard(cfg.max_clients, cfg.max_clients_per_address, cfg.head_timeout_s)
    try:
        server = StatusHTTPServer((host, port), app, guard)
    except OSError as exc:
        raise AgentError(f"cannot serve the status page on {listen}: {exc.strerror or exc}") from None
    bound_host, bound_port = server.server_address[:2]
    host_text = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
    shown = f"[{host_text}]" if ":" in host_text else host_text
    url = f"http://{shown}:{bound_port}/"
    if token is None:
        log.info("status page: %s", url)
    else:
        where = url if is_loopback(host) else f"http://<this node's address>:{bound_port}/"
        log.info("status page: %s (token required: open %s?token=<http.token> once)", url, where)
    return WebStage(server, app, preview, url)


def disclose(config: Config) -> list[dict[str, Any]]:
    """For `agent privacy report`: the local status page (HTTP, not MQTT)."""
    http = config.http
    if http.listen in ("", "off"):
        return [
            {
                "name": "local status page",
                "topic": "not served (except by `agent --simulate`, on a loopback port)",
                "content": "-",
            }
        ]
    protected = http.token is not None or http.token_file is not None
    return [
        {
            "name": "local status page",
            "topic": f"HTTP on {http.listen}" + (" (token required)" if protected else " (loopback only)"),
            "content": "a live preview while someone watches (at most "
            f"{http.preview_fps:g} images/s, {http.preview_width} px wide, privacy masks always blacked out, "
            + (
                "faces redacted"
                if http.preview_faces and config.privacy.faces.redact
                else "faces NOT redacted ("
                + ("http.preview_faces = false" if not http.preview_faces else "privacy.faces.redact = false")
                + ")"
            )
            + "), the latest events with their thumbnails, the node's state (/status.json) and "
            "metrics (/metrics); nothing is recorded",
        }
    ]
