"""Event records, thumbnails, and the local outputs fed from the spool's commits."""

from agent.events.emitter import EVENTS_STREAM, THUMBS_STREAM, EventEmitter, JsonLinesOutput
from agent.events.local_thumbs import LocalThumbnails
from agent.events.record import SCHEMA_ID, EventFactory, normalise
from agent.events.thumbs import Thumbnail, make_thumbnail
from agent.events.types import (
    CameraFields,
    ClockStamp,
    EventBody,
    EventContext,
    EventPriority,
    EventType,
    Flaps,
    LinkSignal,
    LinkState,
    Location,
    ModelInfo,
    RuleFields,
    SnapshotInfo,
    ThumbMeta,
    UpdateFields,
)

__all__ = [
    "EVENTS_STREAM",
    "SCHEMA_ID",
    "THUMBS_STREAM",
    "CameraFields",
    "ClockStamp",
    "EventBody",
    "EventContext",
    "EventEmitter",
    "EventFactory",
    "EventPriority",
    "EventType",
    "Flaps",
    "JsonLinesOutput",
    "LinkSignal",
    "LinkState",
    "LocalThumbnails",
    "Location",
    "ModelInfo",
    "RuleFields",
    "SnapshotInfo",
    "ThumbMeta",
    "Thumbnail",
    "UpdateFields",
    "make_thumbnail",
    "normalise",
]
