"""What the back office takes from the operator's fleet directory (made by `vigil-provision`): the
operator's certificate for mutual TLS, the topic prefix, the broker URL, and the inventory of nodes
(who may publish, where each pole stands, which site it is).

The inventory is re-read when the file changes, so a node added with `vigil-provision add-node`
is accepted without restarting the ingest; messages from nodes it does not list are quarantined as
`unknown_node` (and can be replayed later with `vigil-fleet quarantine --replay`).
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

DEFAULT_PREFIX = "vigil"


@dataclass(frozen=True)
class NodeInfo:
    site: str
    lat: float | None
    lon: float | None
    revoked: bool


class InventoryWatch:
    """Known nodes from FLEET/inventory.toml; re-read at most every `recheck_s` when it changed."""

    def __init__(self, path: Path, recheck_s: float = 2.0) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
        except OSError:
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        from provisioning.errors import ProvisionError
        from provisioning.inventory import Inventory

        try:
            inventory = Inventory.load(self.path)
        except ProvisionError as exc:
            if force:
                raise FleetError(str(exc)) from None
            return  # keep the last good one
        self._nodes = {
            name: NodeInfo(entry.spec.site, entry.spec.lat, entry.spec.lon, entry.cert.is_revoked)
            for name, entry in inventory.nodes.items()
        }
        self._stamp = stamp

    def check(self, node: str) -> str | None:
        """None when the node may publish, else why not."""
        with self._lock:
            self._refresh()
            info = self._nodes.get(node)
        if info is None:
            return f"{node} is not in the fleet inventory ({self.path})"
        if info.revoked:
            return f"{node} is revoked"
        return None

    def nodes(self) -> dict[str, NodeInfo]:
        with self._lock:
            self._refresh()
            return dict(self._nodes)


@dataclass
class FleetContext:
    """Everything --fleet/--operator give the ingest and the page."""

    prefix: str
    broker: str | None = None
    tls: ssl.SSLContext | None = None
    operator: str | None = None
    inventory: InventoryWatch | None = None
    name: str | None = None


def operator_tls(fleet_dir: Path, operator: str) -> ssl.SSLContext:
    folder = fleet_dir / "operators" / operator
    ca, cert, key = folder / "ca.crt", folder / f"{operator}.crt", folder / f"{operator}.key"
    for path in (ca, cert, key):
        if not path.is_file():
            raise FleetError(
                f"{path} is missing: create the operator with "
                f"`vigil-provision --fleet {fleet_dir} add-operator {operator}`"
            )
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise FleetError(f"cannot use the certificate of operator {operator} in {folder}: {exc}") from None
    return context


def load_fleet(fleet_dir: Path | None, operator: str | None, prefix: str | None = None) -> FleetContext:
    """The context for `--fleet DIR [--operator NAME] [--prefix P]`; without --fleet, a plain local broker."""
    if fleet_dir is None:
        if operator:
            raise FleetError("--operator needs --fleet DIR (the fleet directory made by vigil-provision)")
        return FleetContext(prefix=prefix or DEFAULT_PREFIX)
    from provisioning.errors import ProvisionError
    from provisioning.fleet import FLEET_FILE, load_settings

    fleet_dir = fleet_dir.expanduser().resolve()
    try:
        settings = load_settings(fleet_dir / FLEET_FILE)
    except ProvisionError as exc:
        raise FleetError(str(exc)) from None
    return FleetContext(
        prefix=prefix or settings.topic_prefix,
        broker=settings.broker,
        tls=operator_tls(fleet_dir, operator) if operator else None,
        operator=operator,
        inventory=InventoryWatch(fleet_dir / "inventory.toml"),
        name=settings.name,
    )


def positions(inventory: InventoryWatch | None) -> dict[str, dict[str, Any]]:
    """Configured positions and sites by node, for the map (GNSS fixes from the nodes take precedence)."""
    if inventory is None:
        return {}
    return {
        name: {"site": info.site, "lat": info.lat, "lon": info.lon, "revoked": info.revoked}
        for name, info in inventory.nodes().items()
    }
