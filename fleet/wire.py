"""What a message from the fleet means: topic and payload in, a typed record or a rejection out.

Pure functions only (no database, no MQTT), so every rule about bad input is tested on its own. The
topics are the nodes' contract (README "Uplink"):

    {prefix}/{node}/events              event JSON (schema/event-v1.json), QoS 1
    {prefix}/{node}/thumbs/{event_id}   JPEG whose sha256 the event's `thumb.sha256` names
    {prefix}/{node}/status              retained {"state": "online"|"offline", ...} (+ last will)
    {prefix}/{node}/telemetry           {"schema": "vigil.telemetry/1", ...}
    {prefix}/{node}/cmd_result          replies to operators' commands

Anything else that arrives (not JSON, wrong schema, oversized, a node the fleet does not know, a body
that names another node than its topic) becomes a `Rejected` with a stable reason; the ingest keeps
it in the quarantine table and never crashes on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet.eventschema import SCHEMA_FAMILY, SCHEMA_IDS, EventValidator

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # schema/event-v1.json, property `node`
EVENT_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
JSON_LIMIT = 64 * 1024  # events are ~0.6 kB and telemetry ~1.5 kB; anything this big is not ours
THUMB_LIMIT = 1024 * 1024  # the generated broker config refuses bigger packets anyway
QUARANTINE_KEEP = THUMB_LIMIT  # the first bytes of an oversized payload are kept with its size
MAX_SEQ = 2**53  # a 64-bit column holds it; a node at 100 events/s takes 2.8 million years to get there
STATES = ("online", "offline")
SUFFIXES = ("events", "thumbs/+", "status", "telemetry", "cmd_result")

# Rejection reasons (stable: they are metric labels and a CLI filter)
BAD_TOPIC = "bad_topic"
UNKNOWN_NODE = "unknown_node"
NOT_JSON = "not_json"
SCHEMA = "schema"
UNSUPPORTED_SCHEMA = "unsupported_schema"
OVERSIZED = "oversized"
NODE_MISMATCH = "node_mismatch"
NOT_JPEG = "not_jpeg"
THUMB_MISMATCH = "thumb_mismatch"
THUMB_UNEXPECTED = "thumb_unexpected"
ID_CONFLICT = "id_conflict"
REASONS = (
    BAD_TOPIC,
    UNKNOWN_NODE,
    NOT_JSON,
    SCHEMA,
    UNSUPPORTED_SCHEMA,
    OVERSIZED,
    NODE_MISMATCH,
    NOT_JPEG,
    THUMB_MISMATCH,
    THUMB_UNEXPECTED,
    ID_CONFLICT,
)


DEGRADED_MARK = b"vigil-degraded original-sha256="  # the JPEG comment of a thumbnail shrunk on the node


def degraded_original(jpeg: bytes) -> str | None:
    """The original's sha256 named by a thumbnail the node shrank for a slow link (a COM segment right
    after the JPEG's start-of-image marker; docs/uplink.md), or None."""
    if jpeg[2:4] != b"\xff\xfe":
        return None
    text = jpeg[6 : 4 + int.from_bytes(jpeg[4:6], "big")]
    return text[len(DEGRADED_MARK) :].decode("ascii", "replace") if text.startswith(DEGRADED_MARK) else None


@dataclass(frozen=True)
class Incoming:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    received_at: float
    retain: bool = False
    degraded: bool = False  # MQTT 5 user property `vigil-degraded: 1`: a thumbnail re-encoded on the node


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float
    mode: str


@dataclass(frozen=True)
class Event:
    node: str
    id: str
    seq: int
    type: str
    priority: str
    ts: str
    ts_epoch: float | None
    clock_trusted: bool | None
    historical: bool
    label: str | None
    thumb_sha256: str | None
    location: Location | None
    agent_model: str | None
    text: str  # the record exactly as the node sent it


@dataclass(frozen=True)
class Thumb:
    node: str
    event_id: str
    jpeg: bytes
    sha256: str
    degraded: bool
    original: str | None = None  # the sha256 a degraded thumbnail names (its JPEG comment), if it does

    def stands_for(self, sha256: str | None) -> bool:
        """Whether this is the thumbnail named `sha256`: the original itself, or a copy the node made
        smaller that names it (any MQTT version); with only the MQTT 5 flag, trusted as before."""
        if sha256 is None:
            return False
        if self.sha256 == sha256:
            return True
        if self.original is not None:
            return self.original == sha256
        return self.degraded


@dataclass(frozen=True)
class Status:
    node: str
    state: str
    body: dict[str, Any]
    text: str
    retained: bool


@dataclass(frozen=True)
class Telemetry:
    node: str
    body: dict[str, Any]
    text: str
    digest: str


@dataclass(frozen=True)
class Reply:
    node: str
    request_id: str | None
    command: str | None
    status: str | None
    text: str
    digest: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str
    node: str | None = None


Parsed = Event | Thumb | Status | Telemetry | Reply | Rejected
NodeCheck = Callable[[str], str | None]  # node id -> None when accepted, else a rejection reason's detail


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_ts(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class WireParser:
    """Turns `Incoming` messages into records; `known` (from the fleet inventory) refuses strangers."""

    def __init__(self, prefix: str, validator: EventValidator, known: NodeCheck | None = None) -> None:
        self.prefix = prefix.strip("/")
        self._levels = self.prefix.count("/") + 1
        self.validator = validator
        self.known = known

    def filters(self) -> list[str]:
        """The topic filters the ingest subscribes to."""
        return [f"{self.prefix}/+/{suffix}" for suffix in SUFFIXES]

    def parse(self, msg: Incoming) -> Parsed:
        levels = msg.topic.split("/")
        if "/".join(levels[: self._levels]) != self.prefix or len(levels) < self._levels + 2:
            return Rejected(BAD_TOPIC, f"not under {self.prefix}/<node>/")
        node, rest = levels[self._levels], levels[self._levels + 1 :]
        if not NODE_ID.match(node):
            return Rejected(BAD_TOPIC, f"node level {node[:80]!r} is not a node id")
        if self.known is not None:
            refused = self.known(node)
            if refused is not None:
                return Rejected(UNKNOWN_NODE, refused, node)
        kind = rest[0]
        if kind == "thumbs" and len(rest) == 2:
            return self._thumb(node, rest[1], msg)
        if len(rest) != 1 or kind not in ("events", "status", "telemetry", "cmd_result"):
            return Rejected(BAD_TOPIC, f"unknown topic {'/'.join(rest)[:80]!r}", node)
        if len(msg.payload) > JSON_LIMIT:
            return Rejected(OVERSIZED, f"{len(msg.payload)} bytes (limit {JSON_LIMIT})", node)
        body = _json_object(msg.payload)
        if isinstance(body, Rejected):
            return Rejected(body.reason, body.detail, node)
        text = msg.payload.decode("utf-8")
        claimed = body.get("node")
        if claimed is not None and claimed != node:
            return Rejected(
                NODE_MISMATCH, f"published on {node}'s topic but says node {str(claimed)[:80]!r}", node
            )
        if kind == "events":
            return self._event(node, body, text)
        if kind == "status":
            state = body.get("state")
            if state not in STATES:
                return Rejected(SCHEMA, f"status: state {str(state)[:40]!r} is not online or offline", node)
            return Status(node, str(state), body, text, msg.retain)
        if kind == "telemetry":
            return Telemetry(node, body, text, digest(msg.payload))
        request_id, command, status = body.get("id"), body.get("command"), body.get("status")
        return Reply(
            node,
            request_id if isinstance(request_id, str) else None,
            command if isinstance(command, str) else None,
            status if isinstance(status, str) else None,
            text,
            digest(msg.payload),
        )

    def _thumb(self, node: str, event_id: str, msg: Incoming) -> Parsed:
        if not EVENT_ID.match(event_id):
            return Rejected(BAD_TOPIC, f"thumbnail for {event_id[:80]!r}, which is not an event id", node)
        if len(msg.payload) > THUMB_LIMIT:
            return Rejected(OVERSIZED, f"{len(msg.payload)} bytes (limit {THUMB_LIMIT})", node)
        if not msg.payload.startswith(b"\xff\xd8\xff"):
            return Rejected(NOT_JPEG, f"{len(msg.payload)} bytes that do not start like a JPEG", node)
        original = degraded_original(msg.payload)
        return Thumb(
            node, event_id, msg.payload, digest(msg.payload), msg.degraded or original is not None, original
        )

    def _event(self, node: str, body: dict[str, Any], text: str) -> Parsed:
        schema = body.get("schema")
        if schema == "vigil.event/1.1" and isinstance(body.get("clock"), dict):
            body = expand(body, node)  # read whole; stored as sent (readers expand: fleet.store.reader)
        if isinstance(schema, str) and schema not in SCHEMA_IDS and schema.startswith(SCHEMA_FAMILY):
            known = " and ".join(SCHEMA_IDS)
            return Rejected(UNSUPPORTED_SCHEMA, f"{schema[:40]} (this ingest knows {known})", node)
        problem = self.validator.problem(body)
        if problem is not None:
            return Rejected(SCHEMA, problem, node)
        event_id = str(body["id"])
        if not EVENT_ID.match(event_id):
            return Rejected(SCHEMA, f"id: {event_id[:80]!r} is not a UUID", node)
        if int(body["seq"]) > MAX_SEQ:
            return Rejected(SCHEMA, f"seq: {body['seq']} is beyond {MAX_SEQ}", node)
        thumb = body.get("thumb")
        clock = body.get("clock")
        trusted = clock.get("trusted") if isinstance(clock, dict) else None
        if trusted is None and isinstance(clock, dict) and isinstance(clock.get("source"), str):
            trusted = clock["source"] in ("ntp", "gnss")  # 1.1 leaves it out: it follows from the source
        model = body.get("model")
        return Event(
            node=node,
            id=event_id,
            seq=int(body["seq"]),
            type=str(body["type"]),
            priority=str(body.get("priority") or "normal"),
            ts=str(body["ts"]),
            ts_epoch=parse_ts(str(body["ts"])),
            clock_trusted=trusted if isinstance(trusted, bool) else None,
            historical=body.get("historical") is True,
            label=body["label"] if isinstance(body.get("label"), str) else None,
            thumb_sha256=str(thumb["sha256"]) if isinstance(thumb, dict) and "sha256" in thumb else None,
            location=location_of(body.get("location")),
            agent_model=str(model["name"]) if isinstance(model, dict) and "name" in model else None,
            text=text,
        )


def expand(record: dict[str, Any], node: str) -> dict[str, Any]:
    """The vigil.event/1 record a compact vigil.event/1.1 record stands for (docs/events.md): what it
    leaves out has one documented value, the node is the topic's."""
    full = {"priority": "normal", "thumb": None, "location": None, "link": None, **record}
    full["schema"] = "vigil.event/1"
    full.setdefault("node", node)
    clock = dict(record["clock"])
    clock.setdefault("trusted", clock.get("source") in ("ntp", "gnss"))
    full["clock"] = clock
    if "first_seen" in full:
        full.setdefault("last_seen", full["ts"])
    return full


def _json_object(payload: bytes) -> dict[str, Any] | Rejected:
    try:
        body = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejected(NOT_JSON, f"not UTF-8 ({exc.reason} at byte {exc.start})")
    except ValueError as exc:
        return Rejected(NOT_JSON, str(exc)[:200])
    if not isinstance(body, dict):
        return Rejected(NOT_JSON, f"a JSON {type(body).__name__}, not an object")
    return body


def fix_mode(value: Any) -> str | None:
    """A GNSS fix mode as events say it ("2d"/"3d") from events or telemetry (NMEA's 2 or 3)."""
    if value in (2, 3, "2", "3"):
        return f"{value}d"
    return value if value in ("2d", "3d") else None


def location_of(value: Any) -> Location | None:
    if not isinstance(value, dict):
        return None
    lat, lon = value.get("lat"), value.get("lon")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return Location(float(lat), float(lon), str(value.get("mode") or "static"))
