"""Event records: the JSON the node publishes on `{prefix}/{node}/events` (schema/event-v1.json).

The factory fills what the pipeline knows (type, label, box, times, model, clock, location). The
spool adds `id` and `seq` when it commits the record, and the publisher adds `historical` when a
record is published after an outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, cast

from agent.capture.base import Frame
from agent.clock import Clock, rfc3339
from agent.events.types import (
    CameraFields,
    ClockStamp,
    EventBody,
    EventContext,
    EventPriority,
    EventType,
    ModelInfo,
    RuleFields,
    UpdateFields,
)
from agent.track import Box, Track

SCHEMA_ID: Final = "vigil.event/1"

ContextProvider = Callable[[], EventContext]


def normalise(box: Box, width: int, height: int) -> list[float]:
    """Pixel box to [x1, y1, x2, y2] in 0..1, rounded to 4 decimals (sub-pixel at 4K is enough)."""
    x1, y1, x2, y2 = box
    return [
        round(min(max(x1 / width, 0.0), 1.0), 4),
        round(min(max(y1 / height, 0.0), 1.0), 4),
        round(min(max(x2 / width, 0.0), 1.0), 4),
        round(min(max(y2 / height, 0.0), 1.0), 4),
    ]


class EventFactory:
    """Builds event bodies; context providers (GNSS, link state) add their fields to every event."""

    def __init__(self, node_id: str, clock: Clock, model_info: Callable[[], ModelInfo]) -> None:
        self.node_id = node_id
        self.clock = clock
        self.model_info = model_info
        self.providers: list[ContextProvider] = []
        self._anchor: tuple[float, float] | None = None  # (stream t, monotonic) of the first frame

    def mono_for(self, t: float) -> float:
        """Monotonic instant of stream time `t`: media time is laid out from the first frame on, so
        events of a file read faster than real time keep consistent, real-time-like timestamps."""
        if self._anchor is None:
            return t
        anchor_t, anchor_mono = self._anchor
        return anchor_mono + (t - anchor_t)

    def see(self, frame: Frame) -> None:
        if self._anchor is None:
            self._anchor = (frame.t, frame.mono)

    def add_context(self, provider: ContextProvider) -> None:
        self.providers.append(provider)

    def base(self, kind: EventType, frame: Frame | None, *, priority: EventPriority = "normal") -> EventBody:
        """Fields every event carries, whatever produced it."""
        if frame is not None:
            self.see(frame)
        mono = self.mono_for(frame.t) if frame is not None else time.monotonic()
        state = self.clock.state()
        clock: ClockStamp = {
            "source": state.source,
            "trusted": state.trusted,
            "boot": self.clock.boot_id,
            "mono": round(mono, 3),
        }
        body: EventBody = {
            "schema": SCHEMA_ID,
            "node": self.node_id,
            "type": kind,
            "priority": priority,
            "ts": rfc3339(self.clock.wall_at(mono)),
            "clock": clock,
            "model": self.model_info().copy(),  # the detector's, not shared with it
            "thumb": None,
            "location": None,
        }
        for provider in self.providers:
            context = provider()
            if "location" in context:
                body["location"] = context["location"]
            if "link" in context:
                body["link"] = context["link"]
        return body

    def from_track(
        self,
        kind: EventType,
        track: Track,
        frame: Frame,
        *,
        priority: EventPriority = "normal",
        extra: RuleFields | None = None,
    ) -> EventBody:
        h, w = frame.image.shape[:2]
        body = self.base(kind, frame, priority=priority)
        body.update(
            {
                "label": track.label,
                "score": round(track.best_score, 3),
                "bbox": normalise(track.box, w, h),
                "track": track.track_id,
                "first_seen": rfc3339(self.clock.wall_at(self.mono_for(track.first_seen))),
                "last_seen": rfc3339(self.clock.wall_at(self.mono_for(track.last_seen))),
            }
        )
        if kind == "object_left":
            body["duration_s"] = round(track.last_seen - track.first_seen, 2)
        if extra:
            add_fields(body, extra)
        return body


def add_fields(body: EventBody, fields: RuleFields | CameraFields | UpdateFields) -> None:
    """A producer's own fields (a rule's, a camera event's, an update's) onto its event, after the
    common ones and in the order `fields` has them. mypy will not merge a narrower TypedDict into a
    wider one; tests/test_event_types.py holds every group's keys and types to `EventBody`'s."""
    cast("dict[str, object]", body).update(fields)
