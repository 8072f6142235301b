"""Motion-region crops (motion.regions): planning, boxes mapped back to the frame, the real detector
finding a small person the whole frame misses, and the pipeline using crops only where it should."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from agent.capture.base import Frame
from agent.clock import Clock
from agent.config.schema import EventsConfig, MotionConfig
from agent.detect import Detection, Detector, load_detector
from agent.detect.card import ModelCard
from agent.detect.regions import Region, detect_regions, plan_regions
from agent.events import EventEmitter, EventFactory
from agent.motion import MotionGate
from agent.pipeline import Pipeline
from agent.track import Tracker
from tests.conftest import CLIP, YOLOX, shared

CARD = ModelCard.model_validate(
    {
        "name": "fake",
        "labels": ["person", "car"],
        "input": {"width": 416, "height": 416},
        "output": {"decoder": "yolox"},
    }
)


class Planted(Detector):
    """Reports the objects planted in frame coordinates, as seen through whatever crop it is given."""

    card = CARD
    sha256 = "0" * 64
    nms_iou = 0.45
    min_box_area = 0.0

    def __init__(self, objects: list[tuple[float, float, float, float]], frame_shape: tuple[int, int]) -> None:
        self.objects = objects
        self.frame_shape = frame_shape
        self.calls: list[tuple[int, int]] = []  # (height, width) of every image it was given

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls.append(image.shape[:2])
        base = image if image.base is None else image.base
        # where the crop sits in the frame: numpy views know their offset into the parent buffer
        offset = (image.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // image.itemsize
        row, col = divmod(offset // 3, self.frame_shape[1])
        h, w = image.shape[:2]
        found = []
        for x1, y1, x2, y2 in self.objects:
            cx1, cy1, cx2, cy2 = max(x1, col), max(y1, row), min(x2, col + w), min(y2, row + h)
            if cx2 > cx1 and cy2 > cy1:
                found.append(Detection("person", 0.9, (cx1 - col, cy1 - row, cx2 - col, cy2 - row), 0))
        return found


def test_small_motion_gets_one_crop_at_the_model_input_size():
    regions = plan_regions([(600, 300, 640, 410)], 1280, 720, 416, 416)
    assert regions is not None and len(regions) == 1
    (r,) = regions
    assert (r.x2 - r.x1, r.y2 - r.y1) == (416, 416)
    assert r.x1 <= 600 and r.x2 >= 640 and r.y1 <= 300 and r.y2 >= 410


def test_crops_stay_inside_the_frame_and_nearby_motion_shares_one():
    near_corner = plan_regions([(1250, 690, 1280, 720)], 1280, 720, 416, 416)
    assert near_corner == [Region(864, 304, 1280, 720)]
    together = plan_regions([(100, 100, 140, 200), (300, 120, 340, 220)], 1280, 720, 416, 416)
    assert together is not None and len(together) == 1


def test_the_whole_frame_when_crops_do_not_pay():
    assert plan_regions([], 1280, 720, 416, 416) is None  # nothing to crop around
    assert plan_regions([(100, 50, 260, 700)], 1280, 720, 416, 416) is None  # taller than any crop
    apart = [(50, 50, 80, 120), (620, 300, 650, 370), (1150, 600, 1180, 690)]  # three crops apart
    assert plan_regions(apart, 1280, 720, 416, 416, max_regions=2) is None
    assert len(plan_regions(apart, 1280, 720, 416, 416, max_regions=3) or []) == 3
    assert plan_regions([(10, 10, 40, 80)], 448, 448, 416, 416) is None  # frame barely larger than the input


def test_detections_in_crops_come_back_in_frame_pixels():
    frame = np.zeros((720, 1280, 3), np.uint8)
    person = (610.0, 310.0, 640.0, 400.0)
    detector = Planted([person], frame.shape[:2])
    regions = plan_regions([person], 1280, 720, 416, 416)
    result = detect_regions(detector, frame, regions)
    assert [d.box for d in result.detections] == [pytest.approx(person)]
    assert detector.calls == [(416, 416)] and result.runs == 1 and not result.full_frame


def test_an_object_cut_by_a_crop_is_looked_at_whole():
    frame = np.zeros((720, 1280, 3), np.uint8)
    moving_part = (600.0, 300.0, 640.0, 360.0)
    whole = (560.0, 300.0, 1000.0, 420.0)  # much wider than the crop planned around its moving part
    detector = Planted([whole], frame.shape[:2])
    result = detect_regions(detector, frame, plan_regions([moving_part], 1280, 720, 416, 416))
    assert result.full_frame and result.runs == 2
    assert [d.box for d in result.detections] == [pytest.approx(whole)]
    # a cut object that is a known stationary track (refreshed on keyframes) costs no extra run
    detector.calls.clear()
    quiet = detect_regions(detector, frame, plan_regions([moving_part], 1280, 720, 416, 416), known=[whole])
    assert quiet.detections == [] and quiet.runs == 1 and detector.calls == [(416, 416)]


def far_frame(image: np.ndarray, scale: float = 0.3) -> np.ndarray:
    """The clip as a camera three times further away would see it: small, inside a 1280×720 frame."""
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 1280, 3), 100, np.uint8)
    canvas[300 : 300 + small.shape[0], 500 : 500 + small.shape[1]] = small
    return canvas


def test_yolox_finds_a_distant_person_in_a_crop_that_the_whole_frame_misses():
    detector = load_detector(shared(YOLOX), classes=["person"], score_threshold=0.4)
    cap = cv2.VideoCapture(str(shared(CLIP)))
    frames = []
    for index in range(1100):
        ok, image = cap.read()
        assert ok
        if index in (300, 800, 1000, 1050):
            frames.append(far_frame(image))
    cap.release()
    whole = sum(bool(detector.detect(f)) for f in frames)
    person_area = (500 + 0.3 * 380, 300, 500 + 0.3 * 550, 300 + 0.3 * 432)  # where the person stands
    crops = 0
    for f in frames:
        result = detect_regions(detector, f, plan_regions([person_area], 1280, 720, 416, 416))
        people = [d for d in result.detections if d.box[0] >= 500 and d.box[2] <= 500 + 0.3 * 768]
        crops += bool(people)
    assert crops == len(frames)
    assert whole < crops


def test_pipeline_crops_on_motion_and_uses_the_whole_frame_on_keyframes(tmp_path):
    from agent.uplink.spool import Spool

    person = (600.0, 300.0, 640.0, 400.0)
    detector = Planted([person], (720, 1280))
    spool = Spool(tmp_path / "spool").start()
    pipeline = Pipeline(
        detector=detector,
        gate=MotionGate(MotionConfig(regions=True, keyframe_interval_s=100.0)),
        tracker=Tracker(),
        factory=EventFactory("t", Clock(), detector.info),
        emitter=EventEmitter(spool),
        events_cfg=EventsConfig(thumbnails=False),
    )
    try:
        for i in range(6):
            image = np.full((720, 1280, 3), 90, np.uint8)
            x = 600 + 8 * i  # a moving grey block where the person is
            image[300:400, x : x + 40] = 200
            pipeline.process(Frame(image, i, i / 10.0, time.monotonic()))
    finally:
        spool.stop()
    assert detector.calls[0] == (720, 1280)  # the first frame is a keyframe: the whole frame
    assert all(call == (416, 416) for call in detector.calls[1:])
    assert pipeline.stats.region_frames == len(detector.calls) - 1 > 0
    assert pipeline.tracker.tracks and pipeline.tracker.tracks[0].box == pytest.approx(person, abs=1)
