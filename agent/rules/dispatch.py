"""Performs what rules decided: each `Firing` becomes an event (with a redacted thumbnail), a pulse on
a local output, and a snapshot request recorded in the audit log.

The collaborators are handed in, so the dispatcher owns no connection and opens nothing. Each
action of a firing is attempted on its own: a full disk that loses the event does not keep the
siren silent, and a failure is counted and logged, never raised into the analysis loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from agent.capture.base import Frame
from agent.events.record import EventFactory, add_fields, normalise
from agent.events.thumbs import LabelledBox, NormBox, Thumbnail, Thumbnailer
from agent.events.types import EventBody, RuleFields
from agent.rules.firing import Firing, region_union
from agent.rules.geometry import PixelBox
from agent.track import Track

log = logging.getLogger(__name__)

EmitFn = Callable[[EventBody, Thumbnail | None], bool]
REGION_THUMB_MAX_SHARE = 0.5  # a crop bigger than this share of the frame is not a thumbnail any more


def rule_fields(firing: Firing) -> RuleFields:
    """The fields a firing adds to its event, in the order they appear in the record (here, not on
    `Firing`: the deciding modules know nothing of events)."""
    fields: RuleFields = {"rule": firing.rule, "zone": firing.target}
    if firing.duration_s is not None:
        fields["duration_s"] = firing.duration_s
    if firing.direction is not None:
        fields["direction"] = firing.direction
    if firing.count is not None:
        fields["count"] = firing.count
    return fields


class Pulser(Protocol):
    """Local outputs (agent.outputs.OutputBank)."""

    def pulse(self, name: str, seconds: float) -> bool: ...


class Audit(Protocol):
    """The node's audit log (agent.privacy.audit.AuditLog)."""

    def record(self, action: str, actor: str, details: dict[str, Any] | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SnapshotRequest:
    """A rule asked for a full frame. The control plane's snapshot command serves it (redacted, audited)."""

    rule: str
    zone: str | None
    event_type: str
    track: int | None
    t: float
    frame: Frame = field(repr=False)


SnapshotHandler = Callable[[SnapshotRequest], None]


def _norm(box: PixelBox, width: int, height: int) -> NormBox:
    x1, y1, x2, y2 = normalise(box, width, height)
    return (x1, y1, x2, y2)


class RuleDispatcher:
    """Turns firings into events, output pulses, snapshot requests and audit entries.

    `thumbnailer` is asked on every event because the privacy stage swaps in its redacting one after
    the rules are built (None: no thumbnails). `on_snapshot` is installed by the control plane.
    """

    def __init__(
        self,
        *,
        emit: EmitFn,
        factory: EventFactory,
        thumbnailer: Callable[[], Thumbnailer | None] = lambda: None,
        outputs: Pulser | None = None,
        audit: Audit | None = None,
    ) -> None:
        self._emit = emit
        self._factory = factory
        self._thumbnailer = thumbnailer
        self.outputs = outputs
        self.audit = audit
        self.on_snapshot: SnapshotHandler | None = None
        self.emitted = 0
        self.snapshot_requests = 0
        self.errors = 0
        self._warned_no_snapshot = False

    def dispatch(self, firings: Sequence[Firing], frame: Frame, tracks: Sequence[Track]) -> None:
        """Act on the firings of `frame`; `tracks` are all of its tracked objects (for redaction)."""
        if not firings:
            return
        h, w = frame.image.shape[:2]
        objects: list[LabelledBox] | None = None

        def every_object() -> list[LabelledBox]:
            nonlocal objects
            if objects is None:
                objects = [(tr.label, _norm(tr.box, w, h)) for tr in tracks]
            return objects

        for firing in firings:
            actions = firing.actions
            self._attempt(firing, "event", partial(self._event, firing, frame, every_object))
            if actions.output and self.outputs is not None:
                self._attempt(firing, "output", partial(self.outputs.pulse, actions.output, actions.output_s))
            if actions.snapshot:
                self._attempt(firing, "snapshot", partial(self._request_snapshot, firing, frame))

    def status(self) -> dict[str, Any]:
        return {"events": self.emitted, "snapshot_requests": self.snapshot_requests, "errors": self.errors}

    # -- actions ------------------------------------------------------------------------------------
    def _attempt(self, firing: Firing, action: str, perform: Callable[[], object]) -> None:
        try:
            perform()
        except Exception:  # lost (counted); the rule's state has moved on regardless
            self.errors += 1
            log.exception("rule %s: %s %s failed", firing.rule, firing.kind, action)

    def _event(self, firing: Firing, frame: Frame, objects: Callable[[], list[LabelledBox]]) -> None:
        h, w = frame.image.shape[:2]
        priority = firing.actions.priority
        box: NormBox | None = None
        if firing.track is not None:
            body = self._factory.from_track(
                firing.kind, firing.track.as_track(), frame, priority=priority, extra=rule_fields(firing)
            )
            box = _norm(firing.track.box, w, h)
        else:
            body = self._factory.base(firing.kind, frame, priority=priority)
            add_fields(body, rule_fields(firing))
            union = region_union(firing.region)
            if union is not None:
                box = _norm(union, w, h)
                body["bbox"] = list(box)
                if (box[2] - box[0]) * (box[3] - box[1]) > REGION_THUMB_MAX_SHARE:
                    box = None  # that would be most of the frame: full frames leave only as snapshots
        thumb = None
        thumbnailer = self._thumbnailer()
        if firing.actions.thumbnail and box is not None and thumbnailer is not None:
            thumb = thumbnailer(frame, box, objects())
        if self._emit(body, thumb):
            self.emitted += 1

    def _request_snapshot(self, firing: Firing, frame: Frame) -> None:
        self.snapshot_requests += 1
        request = SnapshotRequest(firing.rule, firing.target, firing.kind, firing.track_id, firing.t, frame)
        handler = self.on_snapshot
        if self.audit is not None:
            self.audit.record(
                "snapshot.request",
                f"rule:{firing.rule}",
                {"event": firing.kind, "zone": firing.target, "track": request.track, "handled": handler is not None},
            )
        if handler is None:
            if not self._warned_no_snapshot:
                self._warned_no_snapshot = True
                log.warning("rule %s requested a snapshot, but no snapshot handler is installed", firing.rule)
            return
        try:
            handler(request)
        except Exception:
            log.exception("snapshot handler failed for rule %s", firing.rule)
