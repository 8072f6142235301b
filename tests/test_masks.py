"""Privacy masks: nothing inside a mask reaches the detector or any image that leaves the node.

The oracle is independent of the implementation: a pixel belongs to a masked region when its centre
lies inside the polygon (cv2.pointPolygonTest in pixel coordinates, pixel centres at +0.5).
"""

from __future__ import annotations

import json
import time

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.capture.base import Frame
from agent.capture.synthetic import NEAR_PAVEMENT_FEET, Actor, SceneOptions, SyntheticScene
from agent.clock import Clock
from agent.config.privacy import FacesConfig, Mask
from agent.config.rules import polygon_area
from agent.config.schema import EventsConfig, MotionConfig
from agent.detect import load_detector
from agent.events import EventEmitter, EventFactory
from agent.events.thumbs import crop_box
from agent.motion import MotionGate
from agent.pipeline import Pipeline
from agent.privacy import MaskSet, Redactor
from agent.track import Tracker
from agent.uplink.spool import Spool
from tests.conftest import DEFAULT_MODEL


def centres_inside(polygon_px: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd ray casting over arrays of points (boundary points may go either way)."""
    inside = np.zeros(xs.shape, bool)
    n = len(polygon_px)
    for i in range(n):
        (xi, yi), (xj, yj) = polygon_px[i], polygon_px[i - 1]
        if yi == yj:
            continue
        crosses = (yi > ys) != (yj > ys)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x_at = (xj - xi) * (ys - yi) / (yj - yi) + xi
        inside ^= crosses & (xs < x_at)
    return inside


def oracle(polygons, height: int, width: int) -> np.ndarray:
    """True where a pixel's centre is inside any polygon (given in normalised coordinates)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    out = np.zeros((height, width), bool)
    for polygon in polygons:
        out |= centres_inside(np.array(polygon) * (width, height), xs, ys)
    return out


def thumb_oracle(polygons, source_shape, crop, thumb_shape) -> np.ndarray:
    """The oracle on the thumbnail's own pixel grid (thumbnail pixel centres mapped into the frame)."""
    fh, fw = source_shape[:2]
    x1, y1, x2, y2 = crop
    th, tw = thumb_shape[:2]
    ys, xs = np.mgrid[0:th, 0:tw] + 0.5
    fx, fy = x1 + xs * (x2 - x1) / tw, y1 + ys * (y2 - y1) / th
    out = np.zeros((th, tw), bool)
    for polygon in polygons:
        out |= centres_inside(np.array(polygon) * (fw, fh), fx, fy)
    return out


coord = st.floats(0.0, 1.0, allow_nan=False)
polygon = st.lists(st.tuples(coord, coord), min_size=3, max_size=6)


@st.composite
def scenario(draw):
    polys = draw(st.lists(polygon, min_size=1, max_size=3))
    for p in polys:
        assume(polygon_area(p) > 0.002)
    height = draw(st.integers(40, 120))
    width = draw(st.integers(40, 160))
    seed = draw(st.integers(0, 2**31 - 1))
    x1, x2 = sorted(draw(st.tuples(coord, coord)))
    y1, y2 = sorted(draw(st.tuples(coord, coord)))
    assume(x2 - x1 > 0.05 and y2 - y1 > 0.05)
    max_side = draw(st.sampled_from([32, 48, 100, 320]))
    return polys, height, width, seed, (x1, y1, x2, y2), max_side


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(scenario())
def test_masked_regions_never_leave(case):
    polys, height, width, seed, box, max_side = case
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, (height, width, 3), dtype=np.uint8)  # no zero pixel to begin with
    masks = MaskSet([Mask(name=f"m{i}", polygon=p) for i, p in enumerate(polys)])
    # faces off: this test is about masks; the person fallback would pixelate, which is tested apart
    redactor = Redactor(masks, None, FacesConfig(redact=False), max_side=max_side, quality=80, margin=0.15)
    truth = oracle(polys, height, width)

    # 1. before detection: the filtered frame is black wherever a mask is
    frame = redactor.filter(Frame(image=image, index=0, t=0.0, mono=0.0))
    assert not frame.image[truth].any()
    assert np.array_equal(frame.image[~masks.array(height, width)], image[~masks.array(height, width)])

    # 2. the image that is encoded and sent has no unmasked pixel in a masked region
    rendered = redactor.render(frame, box, [])
    if rendered is None:
        return
    crop = crop_box(image.shape, box, 0.15)
    small_truth = thumb_oracle(polys, image.shape, crop, rendered.image.shape)
    assert not rendered.image[small_truth].any()
    if small_truth.any():
        assert "masks" in rendered.redaction

    # 3. and the emitted JPEG does not depend on what was behind the mask at all
    other = image.copy()
    other[truth] = rng.integers(1, 256, (int(truth.sum()), 3), dtype=np.uint8)
    a = redactor(redactor.filter(Frame(image=image, index=0, t=0.0, mono=0.0)), box, [])
    b = redactor(redactor.filter(Frame(image=other, index=0, t=0.0, mono=0.0)), box, [])
    assert a is not None and b is not None and a.jpeg == b.jpeg


def test_masks_apply_to_the_main_stream_and_to_full_frames():
    masks = MaskSet([Mask(name="window", polygon=[(0.1, 0.1), (0.5, 0.1), (0.5, 0.4), (0.1, 0.4)])])
    redactor = Redactor(masks, None, FacesConfig(redact=False))
    lores = np.full((90, 160, 3), 200, np.uint8)
    main = np.full((360, 640, 3), 200, np.uint8)
    frame = redactor.filter(Frame(image=lores, index=0, t=0.0, mono=0.0, main=main))
    assert not frame.image[oracle([masks.masks[0].polygon], 90, 160)].any()
    assert not frame.main[oracle([masks.masks[0].polygon], 360, 640)].any()
    assert lores.min() == 200 and main.min() == 200  # the capture's own arrays are not modified
    full = redactor.redact_frame(main)
    assert full.redaction == ("masks",) and not full.image[oracle([masks.masks[0].polygon], 360, 640)].any()


def test_live_mask_swap_is_atomic_and_used_by_the_next_frame():
    redactor = Redactor(MaskSet(), None, FacesConfig(redact=False))
    image = np.full((60, 80, 3), 50, np.uint8)
    assert redactor.filter(Frame(image=image, index=0, t=0.0, mono=0.0)).image is image
    redactor.set_masks([Mask(name="all", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)])])
    assert not redactor.filter(Frame(image=image, index=1, t=0.1, mono=0.1)).image.any()


def test_a_person_walking_inside_a_mask_is_never_detected(tmp_path):
    """End to end with the shipped detector: the mask is applied before detection."""
    feet = float(NEAR_PAVEMENT_FEET[1] - 5)
    person = Actor(1, "person", 5, -20.0, feet, 4.0, 72.0, ((30, 180, 30), (40, 40, 40), (120, 160, 210)))
    garden = Mask(name="garden", polygon=[(0.0, 0.7), (1.0, 0.7), (1.0, 1.0), (0.0, 1.0)])

    def run(masks: list[Mask]) -> list[dict]:
        spool = Spool(tmp_path / f"spool-{len(masks)}").start()
        records: list[dict] = []
        spool.add_listener(lambda recs: records.extend(json.loads(r.payload) for r in recs if r.is_json))
        detector = load_detector(DEFAULT_MODEL)
        pipeline = Pipeline(
            detector=detector,
            gate=MotionGate(MotionConfig()),
            tracker=Tracker(),
            factory=EventFactory("mask-node", Clock(), detector.info),
            emitter=EventEmitter(spool),
            events_cfg=EventsConfig(),
        )
        redactor = Redactor(MaskSet(masks), None, FacesConfig(redact=False))
        pipeline.filters.append(redactor.filter)
        pipeline.detection_filters.append(redactor.drop_masked)
        pipeline.thumbnailer = redactor
        scene = SyntheticScene(2, 10.0, SceneOptions(actors=[person]))
        try:
            for i in range(160):
                image, _ = scene.render(i)
                pipeline.process(Frame(image=image, index=i, t=i / 10.0, mono=time.monotonic()))
            assert spool.flush(10.0)
        finally:
            spool.stop()
        return records

    assert [r["type"] for r in run([])].count("object_appeared") == 1
    assert run([garden]) == []
