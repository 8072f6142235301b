"""The event body as types: schema/event-v1.json in TypedDicts, for the code that builds events.

`EventBody` is a complete vigil.event/1 record as the node builds it, before the spool adds `id`
and `seq` and the publisher adds `historical`: the fields the schema requires of vigil.event/1 are
required here, every per-type field (track, rule, tamper, camera, snapshot, update) is NotRequired.
The nested objects are typed the way the schema types them (a field the schema does not require is
NotRequired even where the node always fills it), so tests/test_event_types.py can hold the two to
each other: a field added to one and not the other fails it.

The compact revision vigil.event/1.1 that leaves the node by default (agent.events.wire) omits
fields this type requires; it is built generically from an `EventBody` and stays a plain dict.
"""

# No `from __future__ import annotations` here: on Python 3.11 it hides NotRequired from the
# TypedDicts' __required_keys__, which the schema test reads.
from typing import Literal, NotRequired, TypedDict

from agent.clock import ClockSource
from agent.detect.card import ModelInfo as ModelInfo  # the event's `model`: what Detector.info() says

EventType = Literal[
    "object_appeared", "object_left",
    "zone_enter", "zone_exit", "dwell", "line_crossing", "crowding", "object_left_behind", "object_removed",
    "tamper", "tamper_recovered", "camera_lost", "camera_recovered", "camera_unstable", "camera_stable",
    "snapshot", "spool_recovered", "agent_updated", "agent_update_failed",
]  # fmt: skip
SchemaId = Literal["vigil.event/1", "vigil.event/1.1"]
EventPriority = Literal["critical", "normal"]
LocationMode = Literal["static", "2d", "3d"]


class ClockStamp(TypedDict):
    """`clock`: how far `ts` can be trusted, and the boot-local order when it cannot."""

    source: ClockSource
    trusted: bool
    boot: NotRequired[str]
    mono: NotRequired[float]


class ThumbMeta(TypedDict):
    """`thumb`: the JPEG published on {prefix}/{node}/thumbs/{id}."""

    sha256: str
    bytes: int
    size: list[int]
    redaction: NotRequired[list[str]]


class Location(TypedDict):
    """`location`: a fresh GNSS fix or the configured position."""

    lat: float
    lon: float
    mode: LocationMode
    hdop: NotRequired[float | None]
    age_s: NotRequired[float | None]


class LinkSignal(TypedDict, total=False):
    """`link.signal`: what the modem reported (unknown values are left out)."""

    rssi_dbm: float
    rsrp_dbm: float
    rsrq_db: float
    sinr_db: float


class LinkState(TypedDict, total=False):
    """`link`: the uplink's registration (or the reason there is none), technology, operator, signal."""

    registration: str
    technology: str | None
    operator: str | None
    signal: LinkSignal | None


class EventContext(TypedDict, total=False):
    """What a context provider (GNSS location, modem link) adds to every event."""

    location: Location | None
    link: LinkState | None


class Flaps(TypedDict):
    """`flaps`: the drops of an unstable camera."""

    drops: int
    window_s: NotRequired[float]
    down_s: float


class SnapshotInfo(TypedDict, total=False):
    """`snapshot`: who asked for the frame, and how old it was."""

    actor: str
    request: str | None
    frame_age_s: float


class RuleFields(TypedDict):
    """What a rule's firing adds to its event, in record order."""

    rule: str
    zone: str
    duration_s: NotRequired[float]
    direction: NotRequired[str]
    count: NotRequired[int]


class CameraFields(TypedDict):
    """What a camera health event adds."""

    reason: str
    flaps: NotRequired[Flaps]
    duration_s: NotRequired[float]


class UpdateFields(TypedDict, total=False):
    """What agent_updated / agent_update_failed add."""

    reason: str
    from_version: str | None
    to_version: str


class EventBody(TypedDict):
    """A vigil.event/1 record as the node builds it (the spool adds `id` and `seq`)."""

    schema: SchemaId
    node: str
    type: EventType
    priority: EventPriority
    ts: str
    clock: ClockStamp
    model: ModelInfo
    thumb: ThumbMeta | None
    location: Location | None
    link: NotRequired[LinkState | None]
    # track events
    label: NotRequired[str]
    score: NotRequired[float]
    bbox: NotRequired[list[float]]
    track: NotRequired[int]
    first_seen: NotRequired[str]
    last_seen: NotRequired[str]
    duration_s: NotRequired[float]
    # rule events
    rule: NotRequired[str]
    zone: NotRequired[str]
    direction: NotRequired[str]
    count: NotRequired[int]
    # tamper, camera, snapshot, spool and update events
    reason: NotRequired[str]
    flaps: NotRequired[Flaps]
    snapshot: NotRequired[SnapshotInfo]
    from_version: NotRequired[str | None]
    to_version: NotRequired[str]
