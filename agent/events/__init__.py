"""Event records, thumbnails, and the local outputs fed from the spool's commits."""

from agent.events.emitter import EVENTS_STREAM, THUMBS_STREAM, EventEmitter, JsonLinesOutput, ThumbnailFiles
from agent.events.record import SCHEMA_ID, EventFactory, normalise
from agent.events.thumbs import Thumbnail, make_thumbnail

__all__ = [
    "EVENTS_STREAM",
    "SCHEMA_ID",
    "THUMBS_STREAM",
    "EventEmitter",
    "EventFactory",
    "JsonLinesOutput",
    "Thumbnail",
    "ThumbnailFiles",
    "make_thumbnail",
    "normalise",
]
