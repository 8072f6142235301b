"""The cheap downscalers (capture's analysis copy, the motion gate's grey copy) average noise away
like area interpolation does, and hit the exact sizes asked for."""

from __future__ import annotations

import cv2
import numpy as np

from agent.capture.opencv import _analysis_pair, shrink
from agent.motion import shrink_grey


def noise(h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(0).normal(128, 30, shape).clip(0, 255).astype(np.uint8)


def test_exact_halving_is_area_averaging():
    image = noise(720, 1280)
    assert np.array_equal(shrink(image, 640, 360), cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA))


def test_large_frames_get_a_1280_analysis_copy_and_keep_the_original_for_crops():
    for w, h in ((1920, 1080), (2560, 1440), (3840, 2160)):
        image = noise(h, w)
        analysis, main = _analysis_pair(image, 1280)
        assert analysis.shape == (720, 1280, 3) and main is image
        assert analysis.std() < 0.8 * image.std()  # sensor noise is averaged, not sampled through
    small = noise(360, 640)
    assert _analysis_pair(small, 1280) == (small, None)


def test_motion_gate_copy_is_grey_small_and_smooth():
    image = noise(432, 768)
    grey = shrink_grey(image, 160, 90)
    assert grey.shape == (90, 160) and grey.dtype == np.uint8
    reference = cv2.cvtColor(cv2.resize(image, (160, 90), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    assert grey.std() < 1.5 * reference.std()  # averages about as much noise away as area interpolation
    flat = np.full((432, 768, 3), (10, 120, 240), np.uint8)
    expected = cv2.cvtColor(flat[:1, :1], cv2.COLOR_BGR2GRAY)[0, 0]
    assert np.all(np.abs(shrink_grey(flat, 160, 90).astype(int) - int(expected)) <= 1)
