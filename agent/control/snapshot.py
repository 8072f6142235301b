"""Snapshots: the only way a full frame leaves the node, redacted and audited.

Asked for by an operator (`snapshot` command) or by a rule (issue 7's `RuleEngine.on_snapshot`).
The frame goes through the privacy stage's `Redactor.redact_frame` (masks, faces, or the configured
fallback, which may refuse), is shrunk with the masks re-applied at the new size (a shrunken pixel
that touches a masked one stays black), JPEG-encoded and emitted as a `snapshot` event whose image
travels as a thumbnail-class record on ``thumbs/{event id}``. Every request and every image sent is
recorded in the audit log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.capture.base import Frame
from agent.control.protocol import CommandError
from agent.events.thumbs import jpeg, scale_to

if TYPE_CHECKING:
    from agent.config.schema import Config
    from agent.events import EventEmitter, EventFactory
    from agent.health.stage import HealthStage

log = logging.getLogger(__name__)


class Snapshotter:
    def __init__(
        self, config: Callable[[], Config], health: HealthStage, factory: EventFactory, emitter: EventEmitter
    ) -> None:
        self._config = config  # the agent's config now
        self.health = health
        self.factory = factory
        self.emitter = emitter
        self.sent = 0
        self.refused = 0

    def take(
        self,
        *,
        actor: str,
        reason: str,
        request_id: str | None = None,
        frame: Frame | None = None,
        objects: list[tuple[str, tuple[float, float, float, float]]] | None = None,
        audit_request: bool = True,
    ) -> dict[str, Any]:
        """Emit a redacted snapshot of `frame` (default: the newest analysed frame); its metadata."""
        audit = self.health.privacy.audit
        if audit_request:
            audit.record("snapshot.request", actor, {"reason": reason, "request": request_id})
        if frame is None:
            tapped = self.health.tap.latest()
            if tapped is None:
                raise CommandError("no frame has been analysed yet; try again when the camera delivers")
            frame, objects = tapped.frame, tapped.objects()
        cfg = self._config().control
        redactor = self.health.privacy.redactor
        result = redactor.redact_frame(frame.crop_source, objects or [])
        if result.image is None:
            self.refused += 1
            audit.record("snapshot.refused", actor, {"request": request_id, "redaction": list(result.redaction)})
            raise CommandError(
                "the privacy fallback refused this frame (people in view and no face model; see "
                "privacy.faces.fallback); nothing was sent"
            )
        image = scale_to(result.image, cfg.snapshot_max_side)
        region = redactor.masks.array(*image.shape[:2])
        if region is not None:
            image = image.copy()
            image[region] = 0
        thumb = jpeg(image, cfg.snapshot_quality, result.redaction)
        if thumb is None:
            raise CommandError("could not encode the snapshot")
        age = round(max(0.0, time.monotonic() - frame.mono), 1)
        body = self.factory.base("snapshot", frame, priority="normal")
        body["reason"] = reason
        body["snapshot"] = {"actor": actor, "request": request_id, "frame_age_s": age}
        if not self.emitter.emit(body, thumb):
            raise CommandError("the spool refused the snapshot (full of higher-priority records)")
        meta = thumb.meta()
        audit.record("snapshot.sent", actor, {"request": request_id, **meta})
        self.sent += 1
        log.info("snapshot sent for %s (%d bytes, %s)", actor, len(thumb.jpeg), "+".join(thumb.redaction) or "none")
        return {"thumb": meta, "frame_age_s": age, "frame_index": frame.index}
