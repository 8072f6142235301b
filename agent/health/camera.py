"""Camera health: a stream that died, hung or froze becomes a critical `camera_lost` event and a status
flag; when frames flow again, `camera_recovered`.

Three independent signals, because each failure looks different from here (field notes: users ask
for "camera offline" when a stream dies *or freezes*):
- lost: the capture stage gave up on the source and is reconnecting (its `on_state` callback);
- stalled: a live source delivered nothing for `stalled_after_s` although the capture stage thinks
  it is fine (a hung driver, an RTSP server that keeps the socket but sends nothing);
- frozen: bit-identical frames for `frozen_after_s` of stream time (a decoder or camera pipeline
  that repeats its last picture; a real sensor's noise never repeats exactly).
A covered, blinded, defocused or moved camera is the tamper detector's job (agent.tamper): its
state is reported beside these flags, never duplicated as events here.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.capture.base import Frame
from agent.capture.stage import CaptureStage
from agent.config.control import HealthConfig
from agent.detect import Detection
from agent.events import EventEmitter, EventFactory
from agent.track import Tracker

log = logging.getLogger(__name__)


def frame_signature(image: np.ndarray) -> int:
    """A cheap fingerprint of the raw pixels (every 4th pixel, no averaging, so noise still counts)."""
    return zlib.crc32(np.ascontiguousarray(image[::4, ::4]).data)


class CameraHealth:
    """Pipeline observer + capture state callback + `check()` from the health thread."""

    def __init__(
        self,
        cfg: HealthConfig,
        capture: CaptureStage,
        emitter: EventEmitter,
        factory: EventFactory,
        *,
        on_change: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.capture = capture
        self.emitter = emitter
        self.factory = factory
        self.on_change = on_change or (lambda: None)
        self._mono = monotonic
        self._lock = threading.Lock()
        self.problems: dict[str, str] = {}  # kind ("lost", "stalled", "frozen") -> reason
        self.since: float | None = None  # monotonic instant the camera went bad
        self.lost_events = 0
        self.recovered_events = 0
        self._signature: int | None = None
        self._same_since_t: float | None = None
        self._frames_seen = capture.frames_read
        self._progress_mono = monotonic()

    # -- inputs -----------------------------------------------------------------------------------
    def on_capture_state(self, state: str, reason: str) -> None:
        """CaptureStage.on_state: "lost" / "recovered" (runs on the capture thread)."""
        if state == "lost":
            self._set("lost", reason)
        elif state == "recovered":
            self._clear("lost", reason)

    def __call__(self, frame: Frame, detections: list[Detection], tracker: Tracker) -> None:
        """Every analysed frame: look for a picture that stopped changing."""
        signature = frame_signature(frame.image)
        if signature != self._signature:
            self._signature, self._same_since_t = signature, frame.t
            if "frozen" in self.problems:
                self._clear("frozen", "the picture changes again")
            return
        if self._same_since_t is not None and frame.t - self._same_since_t >= self.cfg.frozen_after_s:
            self._set("frozen", f"identical frames for {frame.t - self._same_since_t:.0f}s")

    def check(self) -> None:
        """From the health thread, about once a second: a live source that stopped delivering."""
        read = self.capture.frames_read
        now = self._mono()
        if read != self._frames_seen:
            self._frames_seen, self._progress_mono = read, now
            if "stalled" in self.problems:
                self._clear("stalled", "frames flowing again")
            return
        if not self.capture.source.live or self.capture.lost or self.capture.slot.ended:
            self._progress_mono = now  # reconnecting (reported as lost) or a recording that ended
            return
        if now - self._progress_mono >= self.cfg.stalled_after_s:
            self._set("stalled", f"no frame for {now - self._progress_mono:.0f}s")

    # -- state and events -------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return not self.problems

    def _set(self, kind: str, reason: str) -> None:
        with self._lock:
            if kind in self.problems:
                return
            first = not self.problems
            self.problems[kind] = reason
            if first:
                self.since = self._mono()
        if first:
            log.error("camera %s: %s", kind, reason)
            self._emit("camera_lost", f"{kind}: {reason}")
            self.lost_events += 1
        self.on_change()

    def _clear(self, kind: str, reason: str) -> None:
        with self._lock:
            if self.problems.pop(kind, None) is None:
                return
            recovered = not self.problems
            down_s = self._mono() - self.since if recovered and self.since is not None else None
            if recovered:
                self.since = None
        if recovered:
            log.warning("camera recovered after %.0fs: %s", down_s or 0.0, reason)
            self._emit("camera_recovered", reason, duration_s=down_s)
            self.recovered_events += 1
        self.on_change()

    def _emit(self, kind: str, reason: str, *, duration_s: float | None = None) -> None:
        body = self.factory.base(kind, None, priority="critical")
        body["reason"] = reason
        if duration_s is not None:
            body["duration_s"] = round(duration_s, 2)
        if not self.emitter.emit(body):
            log.error("%s event could not be queued", kind)

    def state(self) -> str:
        with self._lock:
            return next(iter(self.problems), "ok")

    def status(self) -> dict[str, Any]:
        with self._lock:
            problems = dict(self.problems)
            since = self.since
        return {
            "state": next(iter(problems), "ok"),
            "problems": problems,
            "down_s": round(self._mono() - since, 1) if since is not None else None,
            "lost_events": self.lost_events,
            "recovered_events": self.recovered_events,
        }
