"""Multi-object tracking by IoU with constant-velocity prediction.

One object walking through the scene must give one track (one `object_appeared`, one
`object_left`), not one event per frame. Time is stream time (`Frame.t`), so results do not
depend on how fast the machine runs. Tracks that stand still become *stationary* and are kept
through long dropouts (headlights, shadows, a night of darkness), so a parked car does not
re-trigger every time the light changes.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from agent.detect import Detection

if TYPE_CHECKING:
    from agent.config.schema import TrackConfig

Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


@dataclass
class Track:
    track_id: int
    box: Box
    first_seen: float
    last_seen: float
    label_scores: dict[str, float] = field(default_factory=dict)
    hits: int = 1
    confirmed: bool = False
    stationary: bool = False
    best_score: float = 0.0
    best_box: Box | None = None
    velocity: tuple[float, float] = (0.0, 0.0)  # centre px/s
    history: deque[tuple[float, float, float]] = field(
        default_factory=lambda: deque(maxlen=1024)
    )  # (t, cx, cy)
    last_score: float = 0.0

    @property
    def label(self) -> str:
        return max(self.label_scores.items(), key=lambda kv: kv[1])[0]

    def predicted(self, t: float) -> Box:
        dt = min(max(0.0, t - self.last_seen), 1.0)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x1, y1, x2, y2 = self.box
        return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)

    def snapshot(self) -> dict[str, object]:
        return {"track": self.track_id, "label": self.label, "box": self.box, "score": self.best_score}


@dataclass(frozen=True)
class TrackEvent:
    kind: Literal["object_appeared", "object_left"]
    track: Track
    t: float


class Tracker:
    """Greedy IoU association of detections to tracks; emits appeared/left transitions."""

    @classmethod
    def from_config(cls, cfg: TrackConfig) -> Tracker:
        return cls(
            iou_match=cfg.iou_match,
            confirm_hits=cfg.confirm_hits,
            max_missed_s=cfg.max_missed_s,
            stationary_after_s=cfg.stationary_after_s,
            stationary_max_missed_s=cfg.stationary_max_missed_s,
        )

    def __init__(
        self,
        *,
        iou_match: float = 0.25,
        confirm_hits: int = 3,
        max_missed_s: float = 2.0,
        stationary_after_s: float = 10.0,
        stationary_max_missed_s: float = 300.0,
        tentative_max_missed_s: float = 1.0,
        first_id: int = 1,
    ) -> None:
        self.iou_match = iou_match
        self.confirm_hits = confirm_hits
        self.max_missed_s = max_missed_s
        self.stationary_after_s = stationary_after_s
        self.stationary_max_missed_s = stationary_max_missed_s
        self.tentative_max_missed_s = tentative_max_missed_s
        self.tracks: list[Track] = []
        self._ids = itertools.count(first_id)

    @property
    def moving_tracks(self) -> int:
        """Tracks that justify running the detector on every frame (see the motion gate)."""
        return sum(1 for t in self.tracks if not t.stationary)

    def update(self, detections: Sequence[Detection], t: float) -> list[TrackEvent]:
        """Associate one frame's detections (taken at stream time `t`) and return transitions."""
        events: list[TrackEvent] = []
        pairs = []
        for ti, track in enumerate(self.tracks):
            predicted = track.predicted(t)
            for di, det in enumerate(detections):
                overlap = iou(predicted, det.box)
                if track.stationary:
                    overlap = max(overlap, iou(track.box, det.box))
                if overlap >= self.iou_match:
                    same_label = det.label in track.label_scores
                    pairs.append((overlap + (0.2 if same_label else 0.0), ti, di))
        pairs.sort(reverse=True)
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in used_dets:
                continue
            used_tracks.add(ti)
            used_dets.add(di)
            self._absorb(self.tracks[ti], detections[di], t)
            if not self.tracks[ti].confirmed and self.tracks[ti].hits >= self.confirm_hits:
                self.tracks[ti].confirmed = True
                events.append(TrackEvent("object_appeared", self.tracks[ti], t))
        for di, det in enumerate(detections):
            if di not in used_dets:
                track = Track(
                    next(self._ids),
                    det.box,
                    t,
                    t,
                    {det.label: det.score},
                    best_score=det.score,
                    best_box=det.box,
                    last_score=det.score,
                )
                track.history.append((t, *_centre(det.box)))
                if self.confirm_hits <= 1:
                    track.confirmed = True
                    events.append(TrackEvent("object_appeared", track, t))
                self.tracks.append(track)
        events.extend(self.expire(t))
        return events

    def expire(self, t: float) -> list[TrackEvent]:
        """End tracks unseen for too long; call on frames without detection too."""
        events = []
        alive = []
        for track in self.tracks:
            unseen = t - track.last_seen
            if not track.confirmed:
                limit = self.tentative_max_missed_s
            elif track.stationary:
                limit = self.stationary_max_missed_s
            else:
                limit = self.max_missed_s
            if unseen > limit:
                if track.confirmed:
                    events.append(TrackEvent("object_left", track, t))
            else:
                alive.append(track)
        self.tracks = alive
        return events

    def flush(self, t: float) -> list[TrackEvent]:
        """End every confirmed track (the stream ended)."""
        events = [TrackEvent("object_left", tr, t) for tr in self.tracks if tr.confirmed]
        self.tracks = []
        return events

    def _absorb(self, track: Track, det: Detection, t: float) -> None:
        dt = t - track.last_seen
        old_c, new_c = _centre(track.box), _centre(det.box)
        if dt > 0:
            measured = ((new_c[0] - old_c[0]) / dt, (new_c[1] - old_c[1]) / dt)
            a = 0.5
            track.velocity = (
                a * measured[0] + (1 - a) * track.velocity[0],
                a * measured[1] + (1 - a) * track.velocity[1],
            )
        # light smoothing of the size, none of the position (the detector is the measurement)
        w_old, h_old = track.box[2] - track.box[0], track.box[3] - track.box[1]
        w_new, h_new = det.box[2] - det.box[0], det.box[3] - det.box[1]
        w, h = 0.3 * w_old + 0.7 * w_new, 0.3 * h_old + 0.7 * h_new
        track.box = (new_c[0] - w / 2, new_c[1] - h / 2, new_c[0] + w / 2, new_c[1] + h / 2)
        track.last_seen = t
        track.hits += 1
        track.last_score = det.score
        track.label_scores[det.label] = track.label_scores.get(det.label, 0.0) + det.score
        if det.score > track.best_score:
            track.best_score = det.score
            track.best_box = det.box
        track.history.append((t, *new_c))
        while track.history and t - track.history[0][0] > self.stationary_after_s:
            track.history.popleft()
        track.stationary = self._is_still(track, t)

    def _is_still(self, track: Track, t: float) -> bool:
        if t - track.first_seen < self.stationary_after_s:
            return False
        recent = [(c[1], c[2]) for c in track.history if t - c[0] <= self.stationary_after_s]
        if len(recent) < 2:
            return track.stationary
        xs, ys = np.array(recent).T
        diag = float(np.hypot(track.box[2] - track.box[0], track.box[3] - track.box[1]))
        spread = float(np.hypot(xs.max() - xs.min(), ys.max() - ys.min()))
        return spread < 0.15 * max(diag, 1.0)
