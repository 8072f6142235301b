"""The analysis loop: newest frame → motion gate → detector → tracker → events.

`process()` handles one frame and is what tests drive directly; `run()` is the loop the agent
runs on its main thread, fed by the capture stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.capture.base import Frame, SourceError
from agent.capture.stage import CaptureStage
from agent.config.schema import EventsConfig
from agent.detect import Detection, Detector
from agent.detect.regions import detect_regions, plan_regions
from agent.events import EventEmitter, EventFactory, normalise
from agent.events.thumbs import CropThumbnailer, NormBox, Thumbnailer
from agent.motion import MotionGate, MotionResult
from agent.track import Tracker, TrackEvent

log = logging.getLogger(__name__)


def _norm_box(box: tuple[float, float, float, float], width: int, height: int) -> NormBox:
    x1, y1, x2, y2 = normalise(box, width, height)
    return (x1, y1, x2, y2)

FrameObserver = Callable[[Frame, list[Detection], Tracker], None]
FrameFilter = Callable[[Frame], Frame]
DetectionFilter = Callable[[Frame, list[Detection]], list[Detection]]
TrackEventHandler = Callable[[Frame, list[TrackEvent], Tracker], None]


@dataclass
class PipelineStats:
    frames: int = 0
    detections: int = 0
    events: int = 0
    started_mono: float = field(default_factory=time.monotonic)
    last_frame_mono: float = 0.0
    region_frames: int = 0  # frames analysed in motion-region crops (motion.regions)
    region_crops: int = 0  # crops analysed (one detector run each)
    region_recoveries: int = 0  # whole-frame runs added because a crop cut an object

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(1e-6, time.monotonic() - self.started_mono)
        return {
            "frames": self.frames,
            "detections": self.detections,
            "events": self.events,
            "fps_since_start": round(self.frames / elapsed, 2),  # status adds windowed rates as "fps"
            "regions": {
                "frames": self.region_frames,
                "crops": self.region_crops,
                "recoveries": self.region_recoveries,
            },
        }


class Pipeline:
    def __init__(
        self,
        *,
        detector: Detector,
        gate: MotionGate,
        tracker: Tracker,
        factory: EventFactory,
        emitter: EventEmitter,
        events_cfg: EventsConfig,
    ) -> None:
        self.detector = detector
        self.gate = gate
        self.tracker = tracker
        self.factory = factory
        self.emitter = emitter
        self.events_cfg = events_cfg
        self.stats = PipelineStats()
        self.filters: list[FrameFilter] = []  # applied before analysis (privacy masks)
        self.detection_filters: list[DetectionFilter] = []  # before tracking (drop masked objects)
        self.observers: list[FrameObserver] = []  # see every analysed frame (preview, health)
        self.track_handlers: list[TrackEventHandler] = []  # rules engine and friends
        # Makes every event thumbnail; the privacy stage swaps in one that redacts (agent.privacy).
        self.thumbnailer: Thumbnailer = CropThumbnailer(
            max_side=events_cfg.thumb_max_side, quality=events_cfg.thumb_quality, margin=events_cfg.thumb_margin
        )
        self._lock = threading.Lock()  # detector swaps and live config changes
        # Analysis rate cap set live by the control plane (capture.fps); live and paced sources only.
        self.max_fps: float | None = None
        self.rate_skipped = 0
        self._last_analysed_mono: float | None = None

    @property
    def lock(self) -> threading.Lock:
        """Held while a frame is analysed: hold it to change detector or gate settings between frames."""
        return self._lock

    def reconfigure(self, events_cfg: EventsConfig) -> None:
        """Live event settings (whether new objects get a thumbnail); call it holding `lock`."""
        self.events_cfg = events_cfg

    def limit_rate(self, max_fps: float | None) -> None:
        """Cap the analysis rate (capture.fps set live; the camera's own rate changes at the next start)."""
        self.max_fps = max_fps

    def swap_detector(self, detector: Detector) -> Detector:
        with self._lock:
            old, self.detector = self.detector, detector
        return old

    def process(self, frame: Frame) -> list[TrackEvent]:
        for apply in self.filters:
            frame = apply(frame)
        self.stats.frames += 1
        self.stats.last_frame_mono = frame.mono
        self.factory.see(frame)
        with self._lock:
            run, motion = self.gate.decide(frame.image, frame.t, self.tracker.moving_tracks)
            detections: list[Detection] = []
            if run:
                detections = self._detect(frame, motion)
                for keep in self.detection_filters:
                    detections = keep(frame, detections)
                self.stats.detections += len(detections)
                transitions = self.tracker.update(detections, frame.t)
            else:
                transitions = self.tracker.expire(frame.t)
        for event in transitions:
            self._emit(event, frame)
        for handler in self.track_handlers:
            handler(frame, transitions, self.tracker)
        for observer in self.observers:
            observer(frame, detections, self.tracker)
        return transitions

    def _detect(self, frame: Frame, motion: MotionResult | None) -> list[Detection]:
        """The whole frame, or crops around motion and moving tracks when `motion.regions` is on.

        Keyframes always look at the whole frame: they are what finds objects that do not move.
        """
        cfg = self.gate.cfg
        card = getattr(self.detector, "card", None)
        if not cfg.regions or motion is None or card is None or self.gate.last_reason not in ("motion", "tracks"):
            return self.detector.detect(frame.image)
        h, w = frame.image.shape[:2]
        speck = cfg.min_area / 4 * w * h  # a few moving pixels far away must not cost a crop of their own
        boxes = [b for b in motion.boxes if (b[2] - b[0]) * (b[3] - b[1]) >= speck]
        boxes += [t.predicted(frame.t) for t in self.tracker.tracks if not t.stationary]
        regions = plan_regions(boxes, w, h, card.input.width, card.input.height, max_regions=cfg.max_regions)
        if regions is None:
            return self.detector.detect(frame.image)
        result = detect_regions(
            self.detector,
            frame.image,
            regions,
            iou=float(getattr(self.detector, "nms_iou", 0.45)),
            known=[t.box for t in self.tracker.tracks if t.stationary],
            min_area=float(getattr(self.detector, "min_box_area", 0.0)) * w * h,
        )
        self.stats.region_frames += 1
        self.stats.region_crops += len(regions)
        self.stats.region_recoveries += int(result.full_frame)
        return result.detections

    def finish(self, frame: Frame | None) -> list[TrackEvent]:
        """The stream ended: close every open track so each appearance gets its `object_left`."""
        if frame is None:
            return []
        transitions = self.tracker.flush(frame.t)
        for event in transitions:
            self._emit(event, frame)
        return transitions

    def _emit(self, event: TrackEvent, frame: Frame) -> None:
        body = self.factory.from_track(event.kind, event.track, frame)
        thumb = None
        if event.kind == "object_appeared" and self.events_cfg.thumbnails:
            h, w = frame.image.shape[:2]
            objects = [(tr.label, _norm_box(tr.box, w, h)) for tr in self.tracker.tracks]
            thumb = self.thumbnailer(frame, _norm_box(event.track.box, w, h), objects)
        if self.emitter.emit(body, thumb):
            self.stats.events += 1

    def _over_rate(self, frame: Frame, capture: CaptureStage) -> bool:
        """Skip frames that come faster than `max_fps` (never for as-fast-as-possible playback)."""
        if not self.max_fps or capture.slot.block_when_full:
            return False
        last = self._last_analysed_mono
        if last is not None and frame.mono - last < 0.9 / self.max_fps:  # 10 % slack for jitter
            self.rate_skipped += 1
            return True
        self._last_analysed_mono = frame.mono
        return False

    def run(
        self,
        capture: CaptureStage,
        stop: threading.Event,
        *,
        max_frames: int | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> int:
        """Analyse frames until the stream ends, `stop` is set or `max_frames` were processed.

        A live camera that is away (not there yet, or reopening) is not the end of the stream: the
        loop keeps turning and calling `heartbeat` (the systemd watchdog) while the capture thread
        waits for it, so the node stays up and reports the camera instead of being restarted for it.
        Only a capture thread that died without ending the stream (a bug, which a restart does
        cure) stops the loop and the heartbeat.
        """
        last: Frame | None = None
        processed = 0
        while not stop.is_set():
            alive = capture.alive()
            if heartbeat is not None and alive:
                heartbeat()
            frame = capture.slot.get(timeout=0.2)
            if frame is None:
                if not alive and not capture.slot.ended:
                    raise SourceError("the capture thread stopped unexpectedly (see the log); restart the agent")
                if capture.slot.ended:
                    if capture.slot.error is not None and processed == 0:
                        raise SourceError(str(capture.slot.error))
                    if capture.slot.error is not None:
                        log.error("source failed: %s", capture.slot.error)
                    self.finish(last)
                    break
                continue
            if self._over_rate(frame, capture):
                continue
            self.process(frame)
            last = frame
            processed += 1
            if max_frames is not None and processed >= max_frames:
                break
        return processed
