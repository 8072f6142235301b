"""Node descriptions (from the command line or a CSV file) and the record of issued certificates.

Input is validated completely before anything is written: every bad row and field is reported at
once, naming the line and the column, so an operator fixes a 300-row sheet in one pass.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from agent.control.roles import ROLES
from provisioning.errors import ProvisionError
from provisioning.hardware import CAMERAS, MODEM_MANAGERS, MODEMS, NO_MODEM, RTSP_PREFIXES
from provisioning.names import IDENTITY_RULE, has_control_chars, is_apn, is_identity

DEFAULT_CAMERA = "camera-module-3"


@dataclass(frozen=True)
class NodeSpec:
    """One node as the operator describes it; everything the bundle is generated from."""

    id: str
    site: str = ""
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    camera: str = DEFAULT_CAMERA
    modem: str = NO_MODEM
    apn: str = ""
    modem_manager: str = "agent"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


COLUMNS = tuple(f.name for f in fields(NodeSpec))


def _number(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a number") from None
    if math.isnan(value) or not low <= value <= high:
        raise ValueError(f"{name} {raw!r} is outside {low:g}..{high:g}")
    return value


def parse_node(values: dict[str, str]) -> NodeSpec:
    """Build a NodeSpec from text fields (CSV cells or CLI options); ValueError names the field."""
    node_id = values.get("id", "").strip()
    if not node_id:
        raise ValueError("id is empty")
    if not is_identity(node_id):
        raise ValueError(f"id {node_id!r} must be {IDENTITY_RULE}")
    site = values.get("site", "").strip()
    if has_control_chars(site):
        raise ValueError("site contains control characters")
    lat_raw, lon_raw = values.get("lat", "").strip(), values.get("lon", "").strip()
    if bool(lat_raw) != bool(lon_raw):
        raise ValueError("lat and lon go together (give both or neither)")
    lat = _number(lat_raw, "lat", -90, 90) if lat_raw else None
    lon = _number(lon_raw, "lon", -180, 180) if lon_raw else None
    alt_raw = values.get("alt", "").strip()
    alt = _number(alt_raw, "alt", -500, 9000) if alt_raw else None
    if alt is not None and lat is None:
        raise ValueError("alt needs lat and lon")
    camera = values.get("camera", "").strip() or DEFAULT_CAMERA
    if camera not in CAMERAS and not camera.startswith(RTSP_PREFIXES):
        raise ValueError(f"camera {camera!r} is not one of {', '.join(CAMERAS)} or an rtsp:// URL")
    if has_control_chars(camera) or " " in camera:
        raise ValueError("camera URL contains spaces or control characters")
    modem = (values.get("modem", "").strip() or NO_MODEM).lower()
    if modem != NO_MODEM and modem not in MODEMS:
        raise ValueError(f"modem {modem!r} is not one of {', '.join([*MODEMS, NO_MODEM])}")
    apn = values.get("apn", "").strip()
    if apn and not is_apn(apn):
        raise ValueError(f"apn {apn!r} is not a valid access point name")
    if apn and modem == NO_MODEM:
        raise ValueError("apn given but modem is none")
    manager = (values.get("modem_manager", "").strip() or "agent").lower()
    if manager not in MODEM_MANAGERS:
        raise ValueError(f"modem_manager {manager!r} is not one of {', '.join(MODEM_MANAGERS)}")
    return NodeSpec(node_id, site, lat, lon, alt, camera, modem, apn, manager)


def _csv_records(text: str, origin: str) -> list[tuple[int, list[str]]]:
    """CSV records with the source line each starts on; blank and '#' comment lines dropped."""
    reader = csv.reader(io.StringIO(text))
    records: list[tuple[int, list[str]]] = []
    previous_end = 0
    try:
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            records.append((start, row))
    except csv.Error as exc:
        raise ProvisionError(f"{origin}:{reader.line_num}: not valid CSV: {exc}") from None
    return records


def parse_csv(text: str, origin: str) -> list[NodeSpec]:
    """Parse an inventory sheet; raise one ProvisionError listing every bad row, field and duplicate."""
    records = _csv_records(text, origin)
    if not records:
        raise ProvisionError(f"{origin}: empty inventory (need a header row: {', '.join(COLUMNS)})")
    header_line, header = records[0]
    columns = [c.strip().lower() for c in header]
    problems: list[str] = []
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        problems.append(
            f"{origin}:{header_line}: unknown column(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(COLUMNS)})"
        )
    if "id" not in columns:
        problems.append(f"{origin}:{header_line}: the header has no 'id' column")
    if len(set(columns)) != len(columns):
        problems.append(f"{origin}:{header_line}: a column is named twice")
    if problems:
        raise ProvisionError("\n".join(problems))
    specs: list[NodeSpec] = []
    seen: dict[str, int] = {}
    for line_no, row in records[1:]:
        where = f"{origin}:{line_no}"
        if len(row) != len(columns):
            problems.append(f"{where}: {len(row)} fields, the header has {len(columns)}")
            continue
        values = dict(zip(columns, row, strict=True))
        label = f" (node {values['id'].strip()!r})" if values["id"].strip() else ""
        try:
            spec = parse_node(values)
        except ValueError as exc:
            problems.append(f"{where}{label}: {exc}")
            continue
        key = spec.id.lower()
        if key in seen:
            problems.append(f"{where}: node id {spec.id!r} duplicates line {seen[key]}")
            continue
        seen[key] = line_no
        specs.append(spec)
    if problems:
        raise ProvisionError("\n".join(problems))
    if not specs:
        raise ProvisionError(f"{origin}: no nodes in the inventory")
    return specs


def _utc(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return None


@dataclass
class Issued:
    """The certificates of one identity (node, operator or broker): the current one and every serial
    ever issued, with the revoked ones, so a revocation covers older certificates too."""

    serial: str | None = None
    not_after: dt.datetime | None = None
    issued: list[str] = field(default_factory=list)
    revoked: dict[str, dt.datetime] = field(default_factory=dict)
    expires: dict[str, dt.datetime] = field(
        default_factory=dict
    )  # serial -> not after (older inventories lack it)
    role: str | None = None  # operators: viewer, operator or admin (None: issued before roles existed)

    @property
    def is_revoked(self) -> bool:
        return self.serial is not None and self.serial in self.revoked

    def record(self, serial: str, not_after: dt.datetime) -> None:
        self.serial, self.not_after = serial, not_after
        self.expires[serial] = not_after
        if serial not in self.issued:
            self.issued.append(serial)

    def earlier_valid(self) -> list[str]:
        """Serials other than the current one that are not revoked (they may still be in use)."""
        return [s for s in self.issued if s != self.serial and s not in self.revoked]

    def revoke(self, serials: list[str], when: dt.datetime) -> list[str]:
        """Revoke `serials` (those not revoked yet); the newly revoked ones."""
        fresh = [s for s in serials if s not in self.revoked]
        for serial in fresh:
            self.revoked[serial] = when
        return fresh

    def revoke_all(self, when: dt.datetime) -> list[str]:
        """Revoke every serial not yet revoked; the newly revoked ones."""
        return self.revoke(list(self.issued), when)

    def serial_state(self, serial: str, now: dt.datetime) -> str:
        """current / revoked / expired / superseded (a renewal with the same key: still valid)."""
        if serial in self.revoked:
            return "revoked"
        expires = self.expires.get(serial)
        if expires is not None and expires <= now:
            return "expired"
        return "current" if serial == self.serial else "superseded"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"issued": list(self.issued)}
        if self.serial:
            out["serial"] = self.serial
        if self.not_after:
            out["not_after"] = self.not_after
        if self.revoked:
            out["revoked"] = dict(sorted(self.revoked.items()))
        if self.expires:
            out["expires"] = dict(sorted(self.expires.items()))
        if self.role:
            out["role"] = self.role
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Issued:
        revoked = {str(k): _utc(v) for k, v in dict(data.get("revoked", {})).items()}
        expires = {str(k): _utc(v) for k, v in dict(data.get("expires", {})).items()}
        return cls(
            serial=data.get("serial"),
            not_after=_utc(data.get("not_after")),
            issued=[str(s) for s in data.get("issued", [])],
            revoked={k: v for k, v in revoked.items() if v is not None},
            expires={k: v for k, v in expires.items() if v is not None},
            role=str(data["role"]) if data.get("role") in ROLES else None,
        )


@dataclass
class NodeEntry:
    spec: NodeSpec
    cert: Issued = field(default_factory=Issued)


@dataclass
class Inventory:
    """inventory.toml: what was issued to whom, so serials can be revoked and expiry listed."""

    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    operators: dict[str, Issued] = field(default_factory=dict)
    servers: dict[str, Issued] = field(default_factory=dict)
    crl_number: int = 0
    # every broker-config output (its options), so `revoke` can refresh each CRL and ACL
    broker_outputs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Inventory:
        if not path.exists():
            return cls()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ProvisionError(f"{path}: cannot read the inventory: {exc}") from None
        names = [*data.get("nodes", {}), *data.get("operators", {})]
        bad = [name for name in names if not is_identity(name)]
        if bad:  # a hand edit must not smuggle a newline into the broker's ACL
            raise ProvisionError(
                f"{path}: malformed inventory: {', '.join(map(repr, bad))} must be {IDENTITY_RULE}"
            )
        try:
            nodes = {}
            for node_id, entry in data.get("nodes", {}).items():
                spec_fields = {k: entry[k] for k in COLUMNS if k in entry}
                spec = NodeSpec(**{"id": node_id, **{k: v for k, v in spec_fields.items() if k != "id"}})
                nodes[node_id] = NodeEntry(spec, Issued.from_dict(entry))
            return cls(
                nodes=nodes,
                operators={k: Issued.from_dict(v) for k, v in data.get("operators", {}).items()},
                servers={k: Issued.from_dict(v) for k, v in data.get("servers", {}).items()},
                crl_number=int(data.get("crl_number", 0)),
                broker_outputs=[dict(p) for p in data.get("broker_outputs", [])],
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProvisionError(f"{path}: malformed inventory: {exc}") from None

    def dump(self) -> bytes:
        data: dict[str, Any] = {
            "version": 1,
            "crl_number": self.crl_number,
            "broker_outputs": self.broker_outputs,
            "nodes": {
                node_id: {**{k: v for k, v in e.spec.to_dict().items() if k != "id"}, **e.cert.to_dict()}
                for node_id, e in sorted(self.nodes.items())
            },
            "operators": {k: v.to_dict() for k, v in sorted(self.operators.items())},
            "servers": {k: v.to_dict() for k, v in sorted(self.servers.items())},
        }
        header = (
            "# Issued by vigil-provision: every certificate serial, its expiry and revocation. Keep it.\n"
        )
        return (header + tomli_w.dumps(data)).encode()

    def identity(self, name: str) -> tuple[str, Issued] | None:
        if name in self.nodes:
            return "node", self.nodes[name].cert
        if name in self.operators:
            return "operator", self.operators[name]
        return None

    def revoked(self) -> list[tuple[int, dt.datetime]]:
        """Every revoked serial with its revocation time (the CRL's content)."""
        out = []
        for issued in [
            *(e.cert for e in self.nodes.values()),
            *self.operators.values(),
            *self.servers.values(),
        ]:
            out += [(int(serial, 16), when) for serial, when in issued.revoked.items()]
        return sorted(out)
