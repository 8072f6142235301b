"""Camera tamper detection: covered or blinded, defocused, moved → critical `tamper` events.

Every `interval_s` of stream time a grey copy of the frame, `work_width` pixels wide (about a
millisecond on a Pi), is compared with a *reference* of the normal view learned at start:
- contrast (standard deviation) and structure (correlation of the brightness-normalised image with
  the reference): covered or blinded when the contrast collapses *and* the scene's structure is gone;
- sharpness (Laplacian energy relative to the contrast): defocused when it drops while the
  structure is still there;
- position (phase correlation with the reference): moved when the view shifted, or when the
  structure is gone although the image still has contrast.

Day/night transitions must not fire. Every measure is invariant to a global change of brightness
(the correlation works on the normalised image, sharpness is relative to contrast), a contrast
drop alone is not enough for "covered", and the reference follows slow changes with time
constant `adapt_s` while sudden changes must persist `confirm_s` before they count. The reference
is frozen while something looks wrong, so a tamper cannot be learned away, except a moved camera
that stays moved for `relearn_after_s`: its new view becomes the reference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from agent.config.rules import TamperConfig

if TYPE_CHECKING:
    from agent.capture.base import Frame
    from agent.detect import Detection
    from agent.events import EventEmitter, EventFactory
    from agent.track import Tracker

log = logging.getLogger(__name__)

FLAT_STD = 2.0  # grey levels: an image this uniform shows nothing, whatever the reference says
MIN_PHASE_RESPONSE = 0.08  # below this a phase-correlation peak is noise, not a shift
SEVERITY = ("covered", "blinded", "moved", "defocused")


@dataclass(frozen=True)
class Measures:
    mean: float
    contrast: float
    sharpness: float
    similarity: float  # correlation with the reference structure, -1..1
    shift: float  # share of the width the view moved by (phase correlation), 0 if no clear peak


@dataclass(frozen=True)
class TamperChange:
    kind: Literal["tamper", "tamper_recovered"]
    reason: str
    t: float
    duration_s: float | None = None


class TamperDetector:
    """Pure frame logic: feed `check(image, t)` frames in stream-time order; it returns changes."""

    def __init__(self, cfg: TamperConfig) -> None:
        self.cfg = cfg
        self._ref_small: np.ndarray | None = None  # normalised structure, for correlation and shift
        self._ref_contrast = 0.0
        self._ref_mean = 0.0
        self._ref_sharp = 0.0
        self._learned_t = 0.0  # stream time spent learning
        self._started_t: float | None = None
        self._last_t: float | None = None
        self._window: np.ndarray | None = None
        self.tampered: str | None = None
        self.tampered_since = 0.0
        self._candidate_since: float | None = None
        self._clear_since: float | None = None
        self.last: Measures | None = None
        self.checks = 0

    @property
    def learning(self) -> bool:
        return self._learned_t < self.cfg.learn_s

    def reset(self) -> None:
        """Forget the reference (learn the view again), e.g. after a deliberate re-aim."""
        self._ref_small, self._learned_t, self._started_t = None, 0.0, None

    # -- measures -----------------------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        width = min(self.cfg.work_width, w)
        height = max(8, round(h * width / w))
        grey = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        if grey.ndim == 3:
            grey = cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY)
        grey = grey.astype(np.float32)
        small = cv2.resize(grey, (max(8, width // 2), max(8, height // 2)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (5, 5), 1.0)
        return grey, small

    def measure(self, image: np.ndarray) -> tuple[Measures, np.ndarray]:
        grey, small = self._prepare(image)
        mean, contrast = float(grey.mean()), float(grey.std())
        lap = cv2.Laplacian(grey, cv2.CV_32F)
        sharpness = float(lap.var()) / (contrast * contrast + 1.0)
        z = (small - small.mean()) / (float(small.std()) + 1e-3)
        similarity, shift = 1.0, 0.0
        if self._ref_small is not None and self._ref_small.shape == z.shape:
            ref = self._ref_small
            similarity = float((z * ref).mean() / (float(ref.std()) + 1e-6))
            if self._window is None or self._window.shape != z.shape:
                self._window = cv2.createHanningWindow((z.shape[1], z.shape[0]), cv2.CV_32F)
            # copies: some OpenCV builds apply the window to the inputs in place
            (dx, dy), response = cv2.phaseCorrelate(ref.copy(), z.copy(), self._window)
            if response >= MIN_PHASE_RESPONSE:
                shift = math.hypot(dx, dy) / z.shape[1]
        return Measures(mean, contrast, sharpness, similarity, shift), z

    def classify(self, m: Measures) -> str | None:
        """The most severe thing wrong with this view, or None."""
        cfg = self.cfg
        structure_lost = m.similarity < cfg.move_similarity
        flat = m.contrast < FLAT_STD or m.contrast < cfg.cover_ratio * self._ref_contrast
        bright = m.mean > 200 or (m.mean > 150 and m.mean > 1.5 * self._ref_mean)  # light into the lens
        if flat and (structure_lost or bright or m.contrast < FLAT_STD):
            return "blinded" if bright else "covered"
        if m.mean > 235 and structure_lost:
            return "blinded"
        if m.shift > cfg.move_shift or structure_lost:
            return "moved"
        if m.sharpness < cfg.blur_ratio * self._ref_sharp:
            return "defocused"
        return None

    # -- the state machine --------------------------------------------------------------------------
    def check(self, image: np.ndarray, t: float) -> TamperChange | None:
        """Look at one frame (if `interval_s` has passed since the last look)."""
        if self._last_t is not None and 0 <= t - self._last_t < self.cfg.interval_s:
            return None
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        self.checks += 1
        m, z = self.measure(image)
        self.last = m
        if self._started_t is None or self._ref_small is None or self._ref_small.shape != z.shape:
            self._started_t = t
            self._learned_t = 0.0
            self._adopt(m, z, 1.0)
            return None
        if self.learning:
            self._learned_t += dt
            self._adopt(m, z, 0.3)
            return None
        reason = self.classify(m)
        if self.tampered is None:
            return self._while_normal(reason, m, z, t, dt)
        return self._while_tampered(reason, m, z, t)

    def _while_normal(
        self, reason: str | None, m: Measures, z: np.ndarray, t: float, dt: float
    ) -> TamperChange | None:
        if reason is None:
            self._candidate_since = None
            self._adopt(m, z, min(1.0, dt / self.cfg.adapt_s))
            return None
        if self._candidate_since is None:
            self._candidate_since = t
        if t - self._candidate_since < self.cfg.confirm_s:
            return None  # the reference stays frozen while we make sure
        self.tampered, self.tampered_since = reason, self._candidate_since
        self._candidate_since, self._clear_since = None, None
        log.warning("camera tamper: %s (%s)", reason, _describe(m))
        return TamperChange("tamper", reason, t)

    def _while_tampered(self, reason: str | None, m: Measures, z: np.ndarray, t: float) -> TamperChange | None:
        assert self.tampered is not None
        if reason is not None:
            self._clear_since = None
            relearn = self.cfg.relearn_after_s
            if reason == "moved" and self.tampered == "moved" and relearn and t - self.tampered_since >= relearn:
                return self._recover(t, "relearned", relearn=True)
            return None
        if self._clear_since is None:
            self._clear_since = t
        if t - self._clear_since < self.cfg.recover_s:
            return None
        return self._recover(t, self.tampered)

    def _recover(self, t: float, reason: str, *, relearn: bool = False) -> TamperChange:
        ended = self._clear_since if self._clear_since is not None else t  # when the view became normal
        duration = round(ended - self.tampered_since, 2)
        self.tampered, self._clear_since = None, None
        if relearn:
            self.reset()
        log.warning("camera tamper ended (%s) after %.1fs", reason, duration)
        return TamperChange("tamper_recovered", reason, t, duration)

    def _adopt(self, m: Measures, z: np.ndarray, alpha: float) -> None:
        if self._ref_small is None or self._ref_small.shape != z.shape or alpha >= 1.0:
            self._ref_small = z.copy()
            self._ref_contrast, self._ref_mean, self._ref_sharp = m.contrast, m.mean, m.sharpness
            return
        cv2.accumulateWeighted(z, self._ref_small, alpha)
        self._ref_contrast += alpha * (m.contrast - self._ref_contrast)
        self._ref_mean += alpha * (m.mean - self._ref_mean)
        self._ref_sharp += alpha * (m.sharpness - self._ref_sharp)

    def status(self) -> dict[str, Any]:
        return {
            "state": "learning" if self.learning else (self.tampered or "ok"),
            "checks": self.checks,
            "last": _describe(self.last) if self.last else None,
        }


def _describe(m: Measures) -> str:
    return (
        f"brightness {m.mean:.0f}, contrast {m.contrast:.1f}, sharpness {m.sharpness:.3f}, "
        f"similarity {m.similarity:.2f}, shift {m.shift:.3f}"
    )


class TamperStage:
    """Pipeline observer that turns tamper changes into critical events; a stage without threads."""

    name = "tamper"

    def __init__(self, cfg: TamperConfig, emitter: EventEmitter, factory: EventFactory) -> None:
        self.detector = TamperDetector(cfg)
        self.emitter = emitter
        self.factory = factory
        self.events = 0
        self.errors = 0

    def __call__(self, frame: Frame, detections: list[Detection], tracker: Tracker) -> None:
        try:
            change = self.detector.check(frame.image, frame.t)
        except Exception:  # never stop the analysis loop; an odd frame is skipped
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                log.exception("tamper check failed on frame %d (%d failures so far)", frame.index, self.errors)
            return
        if change is None:
            return
        body = self.factory.base(change.kind, frame, priority="critical")
        body["reason"] = change.reason
        if change.duration_s is not None:
            body["duration_s"] = change.duration_s
        if self.emitter.emit(body, None):
            self.events += 1

    def reconfigure(self, cfg: TamperConfig) -> None:
        """Live retuning; the learned reference is kept."""
        self.detector.cfg = TamperConfig.model_validate(cfg.model_dump())

    update = reconfigure  # the name it had before LiveConfig's table

    def start(self) -> None:
        pass

    def stop(self, deadline: float | None = None) -> None:
        pass  # no thread: it works on the analysis thread

    def status(self) -> dict[str, Any]:
        return {"tamper": {**self.detector.status(), "events": self.events, "errors": self.errors}}


def build(agent: Any, running: Any) -> TamperStage | None:
    """Stage builder (agent.app.STAGE_BUILDERS): watch every analysed frame."""
    cfg = agent.config.tamper
    if not cfg.enabled:
        return None
    stage = TamperStage(cfg, running.pipeline.emitter, running.pipeline.factory)
    running.pipeline.observers.append(stage)
    return stage
