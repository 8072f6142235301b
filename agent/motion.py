"""Cheap motion detection that decides when the detector runs.

Differencing a small grey copy of the frame against a slowly adapting background costs well under a
millisecond; the detector costs tens. The detector runs when something moves, while any moving
track is alive (so tracks are not lost between motion blobs), and on a periodic keyframe (so
stationary objects are refreshed and nothing is missed for long).

`max_detect_fps` caps how often the detector may run at all (in stream time): the thermal governor
(agent.detect.thermal) sets it while the CPU is hot, so a node in the sun slows down instead of
being throttled by its firmware. Frames over the cap still go through the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.config.schema import MotionConfig


@dataclass
class MotionResult:
    area: float  # share of the frame that moved
    boxes: list[tuple[float, float, float, float]]  # moving regions, frame pixels


@dataclass
class GateStats:
    frames: int = 0
    detected: int = 0
    reasons: dict[str, int] = field(
        default_factory=lambda: {"motion": 0, "tracks": 0, "keyframe": 0, "always": 0}
    )
    capped: int = 0  # frames that would have run the detector but came faster than max_detect_fps

    @property
    def ratio(self) -> float:
        """Share of frames sent to the detector."""
        return self.detected / self.frames if self.frames else 0.0


def shrink_grey(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A small, anti-aliased grey copy: grey first, then halvings (pyrDown), then the exact size.

    Area-averaging a colour 768×432 frame straight to 160 px wide costs ~1.7 ms on x86 (non-integer
    ratio, three channels) and was the most expensive thing the pipeline did besides inference
    (bench/pipeline.py, components_ms); this is ~5× cheaper and averages as much noise away.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    while grey.shape[1] >= 2 * width and grey.shape[0] >= 2 * height:
        grey = cv2.pyrDown(grey)
    if grey.shape[:2] != (height, width):
        grey = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
    return grey


class MotionGate:
    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self._background: np.ndarray | None = None
        self._last_detect_t: float | None = None
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self.stats = GateStats()
        self.max_detect_fps: float | None = None  # set by the thermal governor; None: no cap
        self.last_reason: str | None = None  # why the detector runs on the current frame (None: it does not)

    def reconfigure(self, cfg: MotionConfig) -> None:
        """Live retuning (the control plane, between two frames); the learned background is kept."""
        self.cfg = cfg

    def measure(self, image: np.ndarray) -> MotionResult:
        h, w = image.shape[:2]
        scale = self.cfg.width / w
        shrunk = shrink_grey(image, self.cfg.width, max(1, round(h * scale)))
        grey: np.ndarray = cv2.GaussianBlur(shrunk, (5, 5), 0).astype(np.float32)
        if self._background is None or self._background.shape != grey.shape:
            self._background = grey.copy()
            return MotionResult(0.0, [])
        # compensate global brightness changes (clouds, dusk, auto-exposure) before differencing
        bg_mean = float(self._background.mean())
        mean = float(grey.mean())
        if mean > 1.0:
            grey *= bg_mean / mean
        diff = cv2.absdiff(grey, self._background)
        mask: np.ndarray = (diff > self.cfg.pixel_threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        cv2.accumulateWeighted(grey, self._background, self.cfg.background_alpha)
        area = float(mask.mean())
        boxes: list[tuple[float, float, float, float]] = []
        if area >= self.cfg.min_area:
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for contour in contours:
                x, y, bw, bh = cv2.boundingRect(contour)
                boxes.append((x / scale, y / scale, (x + bw) / scale, (y + bh) / scale))
        return MotionResult(area, boxes)

    def decide(self, image: np.ndarray, t: float, moving_tracks: int) -> tuple[bool, MotionResult | None]:
        """Whether to run the detector on this frame (taken at stream time `t`)."""
        self.stats.frames += 1
        self.last_reason = None
        if not self.cfg.enabled:
            return self._run("always", t), None
        motion = self.measure(image)
        if self._last_detect_t is None or t - self._last_detect_t >= self.cfg.keyframe_interval_s:
            return self._run("keyframe", t), motion
        if motion.area >= self.cfg.min_area:
            return self._run("motion", t), motion
        if moving_tracks:
            return self._run("tracks", t), motion
        return False, motion

    def _capped(self, t: float) -> bool:
        cap = self.max_detect_fps
        if not cap or self._last_detect_t is None:
            return False
        # 1 % slack so a cap equal to the frame rate never drops a frame to rounding
        return t - self._last_detect_t < 0.99 / cap

    def _run(self, reason: str, t: float) -> bool:
        if self._capped(t):
            self.stats.capped += 1
            return False
        self.stats.detected += 1
        self.stats.reasons[reason] += 1
        self._last_detect_t = t
        self.last_reason = reason
        return True
