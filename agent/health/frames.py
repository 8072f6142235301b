"""The frame tap: the newest analysed frame with what the detector and tracker made of it.

A pipeline observer that only keeps references (no copy, no encoding on the analysis thread), so
the status-page preview, the snapshot command and the model probation can look at the newest frame
whenever they want, at their own pace, on their own threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.capture.base import Frame
from agent.detect import Detection
from agent.events.record import normalise
from agent.track import Tracker


@dataclass(frozen=True)
class TrackView:
    track: int
    label: str
    box: tuple[float, float, float, float]  # frame pixels
    score: float
    confirmed: bool
    stationary: bool


@dataclass(frozen=True)
class Tapped:
    seq: int
    frame: Frame
    detections: tuple[Detection, ...]
    tracks: tuple[TrackView, ...]
    detector_ran: bool

    def objects(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        """(label, normalised box) of every tracked and detected object: what redaction needs to know."""
        h, w = self.frame.image.shape[:2]
        boxes = [(t.label, t.box) for t in self.tracks] + [(d.label, d.box) for d in self.detections]
        return [(label, tuple(normalise(box, w, h))) for label, box in boxes]  # type: ignore[misc]


class FrameTap:
    """Pipeline observer (frame, detections, tracker) → `latest()` / `wait_newer()`."""

    def __init__(self, detector_runs: Callable[[], int], *, history: int = 512) -> None:
        self._detector_runs = detector_runs
        self._cond = threading.Condition()
        self._latest: Tapped | None = None
        self._runs_seen = detector_runs()
        self._seq = 0
        # detections per detector run, newest last: the baseline a new model is compared with
        self.recent_counts: deque[int] = deque(maxlen=history)

    def __call__(self, frame: Frame, detections: list[Detection], tracker: Tracker) -> None:
        runs = self._detector_runs()
        ran = runs != self._runs_seen
        self._runs_seen = runs
        if ran:
            self.recent_counts.append(len(detections))
        tracks = tuple(
            TrackView(t.track_id, t.label, t.box, t.best_score, t.confirmed, t.stationary) for t in tracker.tracks
        )
        with self._cond:
            self._seq += 1
            tapped = Tapped(self._seq, frame, tuple(detections), tracks, ran)
            self._latest = tapped
            self._cond.notify_all()

    def latest(self) -> Tapped | None:
        with self._cond:
            return self._latest

    def wait_newer(self, seq: int, timeout: float) -> Tapped | None:
        """The newest frame once it is newer than `seq`, or None after `timeout`."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None and self._latest.seq > seq, timeout)
            latest = self._latest
        return latest if latest is not None and latest.seq > seq else None

    def wake_all(self) -> None:
        """Release every waiter (shutdown)."""
        with self._cond:
            self._cond.notify_all()
