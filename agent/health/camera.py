"""Camera health: turn what the capture stage sees into a few events an operator can follow.

Events (all critical, one story each; schema/event-v1.json, docs/control.md):
- `camera_lost` when the camera has been away for `lost_after_s` (never opened since start, or
  reconnecting after a drop), stalled (a live source silent for `stalled_after_s` although the
  capture stage thinks it is fine: a hung driver) or frozen (bit-identical frames for
  `frozen_after_s` of stream time: a real sensor's noise never repeats exactly);
  `camera_recovered` (with `duration_s`, counted from the last frame) when all of that is over.
- `camera_unstable` when the stream dropped `unstable_drops` times within `unstable_window_s`
  (with counts), and `camera_stable` once it has held for `stable_after_s` without a drop (with the
  episode's drops, downtime and length). A drop shorter than `lost_after_s` raises nothing by
  itself: a camera that reconnects every few seconds is one `camera_unstable`, not an event storm
  jumping the uplink queue. During an unstable episode a `camera_lost` still tells when the camera
  is away for good, and its `camera_recovered` waits until the stream is stable again, so every
  opening event gets exactly one closing event and an episode costs at most four events.

Detection is by polling the capture stage's counters and timestamps (`CaptureStage.snapshot()`) from
the health thread, so no transition is missed whatever the thread timing; capture callbacks only
wake the health thread early. Covered, blinded, defocused or moved cameras are the tamper
detector's job (agent.tamper): its state is reported beside these flags, never duplicated here.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from agent.capture.base import Frame
from agent.capture.stage import CONNECTING, RECONNECTING, STREAMING, CaptureSnapshot
from agent.config.control import HealthConfig
from agent.detect import Detection
from agent.events import CameraFields, EventEmitter, EventFactory, Flaps
from agent.events.record import add_fields
from agent.track import Tracker

log = logging.getLogger(__name__)

PROBLEM_ORDER = ("lost", "stalled", "frozen")  # which one the state names when several hold

CameraEvent = Literal["camera_lost", "camera_recovered", "camera_unstable", "camera_stable"]
# An event to send, or None: the state changed without one (the listeners are told all the same).
Change = tuple[CameraEvent, CameraFields] | None


def frame_signature(image: np.ndarray) -> int:
    """A cheap fingerprint of the raw pixels (every 4th pixel, no averaging, so noise still counts)."""
    return zlib.crc32(np.ascontiguousarray(image[::4, ::4]).data)


class CaptureView(Protocol):
    """What camera health needs of the capture stage (connecting and reconnecting happen only to
    live sources it waits for; recordings go from streaming to ended)."""

    def snapshot(self) -> CaptureSnapshot: ...


@dataclass
class Episode:
    """An unstable stretch: from the first drop of the burst that started it to `camera_stable`."""

    since: float  # monotonic instant of that first drop
    drops: int
    down_base: float  # the capture's completed downtime before that first drop


class CameraHealth:
    """Pipeline observer (frozen pictures) + `check()` from the health thread (everything else)."""

    def __init__(
        self,
        cfg: HealthConfig,
        capture: CaptureView,
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
        self.problems: dict[str, str] = {}  # "lost" / "stalled" / "frozen" → reason, as they hold now
        self.lost_open = False  # a camera_lost was sent and its camera_recovered not yet
        self.since: float | None = None  # start of the outage that camera_lost reported
        self.episode: Episode | None = None  # a camera_unstable was sent and its camera_stable not yet
        self.reported = CONNECTING  # what the events (and the retained status) say: see reported_state
        first = capture.snapshot()
        # from zero, not from `first`: drops before this stage was built (the capture stage starts
        # first) are this run's drops too, and the first check counts them
        self._drops_seen = 0
        self._down_seen = 0.0
        self._recent: deque[tuple[float, float]] = deque(maxlen=cfg.unstable_drops)  # (drop, down before)
        self._calm_since = monotonic()  # since when nothing went wrong (drops, outages, problems)
        self._snapshot = first
        self._signature: int | None = None
        self._same_since_t: float | None = None
        self.counts = {"camera_lost": 0, "camera_recovered": 0, "camera_unstable": 0, "camera_stable": 0}

    # -- inputs -----------------------------------------------------------------------------------
    def __call__(self, frame: Frame, detections: list[Detection], tracker: Tracker) -> None:
        """Every analysed frame (analysis thread): look for a picture that stopped changing."""
        signature = frame_signature(frame.image)
        if signature != self._signature:
            self._signature, self._same_since_t = signature, frame.t
            if "frozen" in self.problems:
                self._apply(self._clear("frozen", "the picture changes again"))
            return
        if self._same_since_t is not None and frame.t - self._same_since_t >= self.cfg.frozen_after_s:
            frozen_for = frame.t - self._same_since_t
            self._apply(self._set("frozen", f"identical frames for {frozen_for:.0f}s", self._mono() - frozen_for))

    def check(self) -> None:
        """From the health thread, about once a second and whenever the capture stage changes state."""
        snap = self.capture.snapshot()
        now = self._mono()
        out: list[Change] = []
        with self._lock:
            self._snapshot = snap
            self._count_drops(snap, now, out)
            self._judge_stream(snap, now, out)
            self._judge_stability(snap, now, out)
            self._down_seen = snap.down_s
        self._apply(out)

    def _count_drops(self, snap: CaptureSnapshot, now: float, out: list[Change]) -> None:
        new = snap.drops - self._drops_seen
        self._drops_seen = snap.drops
        if new <= 0:
            return
        self._calm_since = now
        for _ in range(new):
            self._recent.append((now, self._down_seen))
        if self.episode is not None:
            self.episode.drops += new
            return
        first_drop, down_base = self._recent[0]
        if len(self._recent) < self.cfg.unstable_drops or now - first_drop > self.cfg.unstable_window_s:
            return
        self.episode = Episode(first_drop, len(self._recent), down_base)
        if not self.lost_open:
            self.reported = "unstable"
        window = now - first_drop
        reason = f"the stream dropped {len(self._recent)} times in {window:.0f}s"
        flaps: Flaps = {"drops": len(self._recent), "window_s": round(window, 1),
                        "down_s": round(snap.down_s - down_base, 1)}
        out.append(("camera_unstable", {"reason": reason, "flaps": flaps}))
        log.error("camera unstable: %s", reason)

    def _judge_stream(self, snap: CaptureSnapshot, now: float, out: list[Change]) -> None:
        if snap.state in (CONNECTING, RECONNECTING):
            self._calm_since = now
            last = snap.last_frame_mono if snap.last_frame_mono is not None else snap.since
            if now - last >= self.cfg.lost_after_s:
                verb = "not opened since start" if snap.last_frame_mono is None else f"no frame for {now - last:.0f}s"
                out += self._set_locked("lost", f"{snap.reason or 'no answer from the camera yet'} ({verb})", last)
            if "stalled" in self.problems:
                out += self._clear_locked("stalled", "the capture stage is reopening the source")
            return
        if snap.state != STREAMING:
            return  # a recording that ended: nothing is wrong with a camera
        if "lost" in self.problems:
            out += self._clear_locked("lost", "frames flowing again")
        if self.reported == CONNECTING and not self.problems:
            self.reported = "unstable" if self.episode else "ok"  # the first frames: worth a status update
            out.append(None)
        if not snap.live or snap.last_frame_mono is None:
            return
        silent = now - snap.last_frame_mono
        if silent >= self.cfg.stalled_after_s:
            self._calm_since = now
            out += self._set_locked("stalled", f"no frame for {silent:.0f}s", snap.last_frame_mono)
        elif "stalled" in self.problems:
            out += self._clear_locked("stalled", "frames flowing again")

    def _judge_stability(self, snap: CaptureSnapshot, now: float, out: list[Change]) -> None:
        if self.problems:
            self._calm_since = now
        episode = self.episode
        if episode is None or now - max(self._calm_since, snap.since) < self.cfg.stable_after_s:
            return
        if self.lost_open:  # the camera_lost of this episode closes before the episode does
            out += self._recovered_locked("the stream is stable again", now)
        self.episode = None
        self._recent.clear()
        self.reported = "ok"
        flaps: Flaps = {"drops": episode.drops, "down_s": round(snap.down_s - episode.down_base, 1)}
        reason = f"no drop for {self.cfg.stable_after_s:g}s after {episode.drops} drops"
        out.append(("camera_stable", {"reason": reason, "flaps": flaps,
                                      "duration_s": round(now - episode.since, 2)}))
        log.warning("camera stable: %s", reason)

    # -- state changes (called with the lock held; events are sent after it is released) -----------
    def _set_locked(self, kind: str, reason: str, began: float) -> list[Change]:
        if kind in self.problems:
            self.problems[kind] = reason  # keep the newest reason (attempts, silence) for the status
            return []
        self.problems[kind] = reason
        if self.lost_open:  # away again before an unstable camera held: its camera_lost is still open
            self.reported = next(k for k in PROBLEM_ORDER if k in self.problems)
            return [None]
        self.lost_open, self.since = True, began
        self.reported = kind
        log.error("camera %s: %s", kind, reason)
        return [("camera_lost", {"reason": f"{kind}: {reason}"})]

    def _clear_locked(self, kind: str, reason: str) -> list[Change]:
        if self.problems.pop(kind, None) is None:
            return []
        if self.problems or not self.lost_open:
            if self.lost_open:
                self.reported = next(k for k in PROBLEM_ORDER if k in self.problems)
            return [None]
        if self.episode is not None:
            self.reported = "unstable"  # camera_recovered waits until it holds (see camera_stable)
            log.info("camera back, but unstable: camera_recovered waits until it holds")
            return [None]
        return self._recovered_locked(reason, self._mono())

    def _recovered_locked(self, reason: str, now: float) -> list[Change]:
        down_s = now - self.since if self.since is not None else 0.0
        self.lost_open, self.since = False, None
        self.reported = "unstable" if self.episode else "ok"
        log.warning("camera recovered after %.0fs: %s", down_s, reason)
        return [("camera_recovered", {"reason": reason, "duration_s": round(down_s, 2)})]

    def _set(self, kind: str, reason: str, began: float) -> list[Change]:
        with self._lock:
            if kind not in self.problems:
                self._calm_since = self._mono()
            return self._set_locked(kind, reason, began)

    def _clear(self, kind: str, reason: str) -> list[Change]:
        with self._lock:
            return self._clear_locked(kind, reason)

    def _apply(self, out: list[Change]) -> None:
        """Send the events (critical: they go first and are evicted last), then tell the listeners."""
        if not out:
            return
        for change in out:
            if change is None:
                continue
            kind, fields = change
            body = self.factory.base(kind, None, priority="critical")
            add_fields(body, fields)
            self.counts[kind] += 1
            if not self.emitter.emit(body):
                log.error("%s event could not be queued", kind)
        self.on_change()

    # -- state ------------------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.state() == "ok"

    def state(self) -> str:
        """The camera right now: a problem, else connecting/reconnecting, else unstable, else ok."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> str:
        for kind in PROBLEM_ORDER:
            if kind in self.problems:
                return kind
        snap = self._snapshot
        if snap.state in (CONNECTING, RECONNECTING):
            return snap.state
        return "unstable" if self.episode is not None else "ok"

    def reported_state(self) -> str:
        """What the events said last (debounced): connecting, ok, lost/stalled/frozen or unstable.

        The retained status carries this one, so a camera that blinks for a second does not
        re-publish it; status, telemetry and the page show `state()`, which blinks with it."""
        with self._lock:
            return self.reported

    def status(self) -> dict[str, Any]:
        now = self._mono()
        with self._lock:
            state = self._state_locked()
            episode = self.episode
            snap = self._snapshot
            return {
                "state": state,
                "reported": self.reported,
                "problems": dict(self.problems),
                "down_s": round(now - self.since, 1) if self.since is not None else None,
                "unstable": None if episode is None else {
                    "for_s": round(now - episode.since, 1),
                    "drops": episode.drops,
                    "down_s": round(snap.down_s - episode.down_base, 1),
                },
                "drops_recent": sum(1 for t, _ in self._recent if now - t <= self.cfg.unstable_window_s),
                "events": dict(self.counts),
                "lost_events": self.counts["camera_lost"],
                "recovered_events": self.counts["camera_recovered"],
            }
