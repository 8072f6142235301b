"""Tamper detection on synthetic and real frames: one critical event and one recovery per tamper,
nothing for day/night ramps. Frames are fed every 0.5 s of stream time (the check interval)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.base import Frame
from agent.capture.synthetic import SceneOptions, SyntheticScene
from agent.clock import Clock
from agent.config.rules import TamperConfig
from agent.events import EventEmitter, EventFactory
from agent.tamper import TamperDetector, TamperStage
from agent.uplink.spool import Spool
from tests.conftest import CLIP, shared

STEP = 5  # frames between checks at 10 fps (interval_s = 0.5)
Modify = Callable[[np.ndarray], np.ndarray]


def cover(image: np.ndarray) -> np.ndarray:
    """A hand or a bag over the lens: dark, almost uniform, sensor noise."""
    noise = np.random.default_rng(int(image[0, 0, 0])).normal(9, 2.5, image.shape)
    return np.clip(noise, 0, 255).astype(np.uint8)


def defocus(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 3.0)


def nudge(image: np.ndarray) -> np.ndarray:
    """The camera was pushed: the view moves by about 5 % of its width."""
    h, w = image.shape[:2]
    shift = np.float32([[1, 0, 0.05 * w], [0, 1, 0.02 * h]])
    return cv2.warpAffine(image, shift, (w, h), borderMode=cv2.BORDER_REFLECT)


def torch(image: np.ndarray) -> np.ndarray:
    """A bright light into the lens: the image saturates."""
    return np.clip(image.astype(np.int16) * 3 + 120, 0, 255).astype(np.uint8)


def synthetic_frames(seconds: float, light=None) -> Iterator[tuple[float, np.ndarray]]:
    scene = SyntheticScene(3, 10.0, SceneOptions(light=light, mean_gap_s=3.0))
    for index in range(0, round(seconds * 10), STEP):
        yield index / 10.0, scene.render(index)[0]


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """Every 5th frame of the first 45 s of the real clip (people walk in and out)."""
    cap = cv2.VideoCapture(str(shared(CLIP)))
    frames = []
    try:
        index = 0
        while index < 450:
            ok, image = cap.read()
            if not ok:
                break
            if index % STEP == 0:
                frames.append(image)
            index += 1
    finally:
        cap.release()
    assert len(frames) == 90
    return frames


class Harness:
    """TamperStage → EventEmitter → a real spool; returns the committed events."""

    def __init__(self, tmp_path: Path, cfg: TamperConfig | None = None) -> None:
        self.spool = Spool(tmp_path / "spool").start()
        self.records: list[dict] = []
        self.spool.add_listener(lambda recs: self.records.extend(json.loads(r.payload) for r in recs))
        factory = EventFactory("tamper-node", Clock(), lambda: {"name": "none"})
        self.stage = TamperStage(cfg or TamperConfig(), EventEmitter(self.spool), factory)

    def play(self, frames) -> list[dict]:
        try:
            for i, (t, image) in enumerate(frames):
                self.stage(Frame(image=image, index=i, t=t, mono=t), [], None)
            assert self.spool.flush(10.0)
        finally:
            self.spool.stop()
        return self.records


def tampered(frames, modify: Modify, start: float, end: float):
    for t, image in frames:
        yield t, modify(image) if start <= t < end else image


def assert_one_tamper_and_recovery(records: list[dict], reason: str, validator) -> None:
    assert [(r["type"], r["reason"]) for r in records] == [("tamper", reason), ("tamper_recovered", reason)]
    assert all(r["priority"] == "critical" for r in records)
    assert records[1]["duration_s"] == pytest.approx(10.0, abs=1.5)
    for record in records:
        validator.validate(record)


@pytest.mark.parametrize(
    ("modify", "reason"), [(cover, "covered"), (defocus, "defocused"), (nudge, "moved"), (torch, "blinded")]
)
def test_synthetic_tamper_fires_once_and_recovers(tmp_path, event_validator, modify, reason):
    records = Harness(tmp_path).play(tampered(synthetic_frames(40), modify, 15.0, 25.0))
    assert_one_tamper_and_recovery(records, reason, event_validator)


@pytest.mark.parametrize(
    ("modify", "reason"), [(cover, "covered"), (defocus, "defocused"), (nudge, "moved"), (torch, "blinded")]
)
def test_real_clip_tamper_fires_once_and_recovers(tmp_path, event_validator, clip_frames, modify, reason):
    frames = [(i * STEP / 10.0, image) for i, image in enumerate(clip_frames)]
    records = Harness(tmp_path).play(tampered(frames, modify, 15.0, 25.0))
    assert_one_tamper_and_recovery(records, reason, event_validator)


def ramp(start: float, end: float, low: float) -> Callable[[float], float]:
    """Full light until `start`, linear to `low` at `end` (a fast dusk: real ones take half an hour)."""
    return lambda t: 1.0 if t < start else max(low, 1.0 - (1.0 - low) * (t - start) / (end - start))


@pytest.mark.parametrize(("duration", "low"), [(60.0, 0.15), (20.0, 0.25)])
def test_synthetic_day_to_night_and_back_does_not_fire(tmp_path, duration, low):
    dusk = ramp(10.0, 10.0 + duration, low)
    def light(t: float) -> float:
        return dusk(t) if t < 20 + duration else dusk(40 + 2 * duration - t)
    records = Harness(tmp_path).play(synthetic_frames(40 + 2 * duration, light=light))
    assert records == []


def test_real_clip_brightness_ramp_does_not_fire(tmp_path, clip_frames):
    dusk = ramp(5.0, 35.0, 0.2)
    frames = [
        (t, (image.astype(np.float32) * dusk(t)).astype(np.uint8))
        for t, image in ((i * STEP / 10.0, image) for i, image in enumerate(clip_frames))
    ]
    assert Harness(tmp_path).play(frames) == []


def test_a_moved_camera_that_stays_moved_is_relearned(tmp_path):
    cfg = TamperConfig(relearn_after_s=20.0)
    frames = tampered(synthetic_frames(70), nudge, 15.0, 1e9)  # nobody puts it back
    records = Harness(tmp_path, cfg).play(frames)
    assert [(r["type"], r["reason"]) for r in records] == [("tamper", "moved"), ("tamper_recovered", "relearned")]


def test_covered_from_the_start_is_still_covered():
    detector = TamperDetector(TamperConfig())
    changes = [detector.check(np.full((360, 640, 3), 3, np.uint8), i * 0.5) for i in range(30)]
    assert [c.reason for c in changes if c] == ["covered"]


def test_tamper_check_is_cheap_and_throttled():
    detector = TamperDetector(TamperConfig(interval_s=0.5))
    image = SyntheticScene(1).render(0)[0]
    for i in range(100):
        detector.check(image, i / 10.0)
    assert detector.checks == 20
