"""What the operators' page shows, as JSON and SVG, read from the database on each request.

A small pool of connections (one per concurrent request at most) serves the HTTP threads; each
request reads one consistent snapshot. Positions: a node's own GNSS fix wins, then the position
configured in the fleet inventory, then the configured position the node reports in its events.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fleet.identity import InventoryWatch, positions
from fleet.store import reader
from fleet.store.db import Database, DbUrl
from fleet.web import svgmap


class DbPool:
    """At most `size` connections, opened when first needed, reused LIFO, replaced after an error."""

    def __init__(self, url: DbUrl, size: int) -> None:
        self.url = url
        self._idle: queue.LifoQueue[Database] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def get(self) -> Iterator[Database]:
        if not self._slots.acquire(timeout=30):
            raise TimeoutError("no database connection free")
        db: Database | None = None
        try:
            try:
                db = self._idle.get_nowait()
            except queue.Empty:
                db = Database.open(self.url)
            yield db
        except Exception:
            if db is not None:
                db.close()
                db = None
            raise
        finally:
            if db is not None:
                self._idle.put(db)
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


@dataclass
class Site:
    pool: DbPool
    inventory: InventoryWatch | None = None
    fleet_name: str = "Vigil fleet"
    tiles: str | None = None
    attribution: str = ""
    silent_after_s: float = reader.SILENT_AFTER_S

    def _nodes(self, db: Database, now: float) -> list[dict[str, Any]]:
        configured = positions(self.inventory)
        out = []
        for row in reader.nodes_overview(db, now, self.silent_after_s):
            item = row.as_dict()
            conf = configured.get(row.node, {})
            item["site"] = conf.get("site") or ""
            gnss = row.position in ("2d", "3d") and row.lat is not None
            if not gnss and conf.get("lat") is not None:
                item.update(lat=conf["lat"], lon=conf["lon"], position="configured")
            out.append(item)
        known = {item["node"] for item in out}
        for name, conf in sorted(configured.items()):  # provisioned, never heard from
            if name not in known and not conf.get("revoked"):
                out.append(_never_seen(name, conf))
        return out

    def fleet(self) -> dict[str, Any]:
        now = time.time()
        with self.pool.get() as db:
            nodes = self._nodes(db, now)
            ingesters = reader.ingesters(db)
            quarantined = reader.quarantine(db, limit=1)["counts"]
        states = {
            s: sum(1 for n in nodes if n["state"] == s) for s in ("online", "silent", "offline", "unknown")
        }
        return {
            "fleet": self.fleet_name,
            "now": now,
            "states": states,
            "nodes": nodes,
            "ingesters": [{**i, "heartbeat_age_s": round(now - i["heartbeat_at"], 1)} for i in ingesters],
            "quarantined": quarantined,
            "open_gaps": sum(n["open_gaps"] for n in nodes),
            "alarms": sum(n["alarms"] for n in nodes),
        }

    def events(self, node: str | None, limit: int) -> list[dict[str, Any]]:
        with self.pool.get() as db:
            return reader.recent_events(db, node=node, limit=limit)

    def node(self, node: str) -> dict[str, Any] | None:
        with self.pool.get() as db:
            detail = reader.node_detail(db, node, silent_after_s=self.silent_after_s)
        conf = positions(self.inventory).get(node)
        if detail is None:
            return (
                None
                if conf is None
                else {"node": _never_seen(node, conf), "events": [], "gaps": [], "alarms": []}
            )
        detail["node"]["site"] = (conf or {}).get("site") or ""
        return detail

    def map_svg(self) -> str:
        now = time.time()
        with self.pool.get() as db:
            nodes = self._nodes(db, now)
        points = [
            svgmap.MapPoint(n["node"], n["lat"], n["lon"], n["state"], bool(n["alarms"]), n.get("site") or "")
            for n in nodes
            if n["lat"] is not None and n["lon"] is not None
        ]
        return svgmap.render(points, tiles=self.tiles, attribution=self.attribution)

    def thumb(self, event_id: str) -> tuple[bytes, str] | None:
        with self.pool.get() as db:
            return reader.thumbnail(db, event_id)

    def metrics(self) -> dict[str, Any]:
        with self.pool.get() as db:
            return reader.metrics_snapshot(db, silent_after_s=self.silent_after_s)


def _never_seen(name: str, conf: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": name,
        "state": "unknown",
        "site": conf.get("site") or "",
        "lat": conf.get("lat"),
        "lon": conf.get("lon"),
        "position": "configured" if conf.get("lat") is not None else None,
        "last_seen": None,
        "status_at": None,
        "agent": None,
        "model": None,
        "backlog": None,
        "backlog_oldest_s": None,
        "link": None,
        "signal_dbm": None,
        "gnss": None,
        "clock_trusted": None,
        "events_last_hour": 0,
        "received": 0,
        "max_seq": 0,
        "open_gaps": 0,
        "missing": 0,
        "alarms": 0,
        "telemetry_at": None,
    }
