"""OpenCV-backed sources: video files, USB webcams and network streams (RTSP/HTTP)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from agent.capture.base import Frame, FrameSource, SourceError, SourceLost, SourceUnavailable
from agent.urls import hide_userinfo

log = logging.getLogger(__name__)

MAX_ANALYSIS_WIDTH = 1280


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Downscale cheaply without aliasing: exact halvings (OpenCV's fast 2:1 area path), then a
    bilinear step of less than 2:1, where bilinear aliases no more than area averaging would.

    Area-averaging 1920×1080 to 1280×720 in one step (a 1.5 ratio, no fast path) cost ~10-15 ms per
    frame on x86, 5× this (bench/README.md); on a Pi it would take most of a core.
    """
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def _analysis_pair(image: np.ndarray, max_width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Downscale very large frames for analysis and keep the original for crops."""
    h, w = image.shape[:2]
    if w <= max_width:
        return image, None
    return shrink(image, max_width, round(h * max_width / w)), image


class VideoFileSource(FrameSource):
    """A recorded video; stream time is media time, so results do not depend on decode speed."""

    name = "file"
    live = False

    def __init__(self, path: Path, *, loop: bool = False, max_width: int = MAX_ANALYSIS_WIDTH):
        self.path = path
        self.loop = loop
        self.max_width = max_width
        self._cap: cv2.VideoCapture | None = None
        self._fps = 10.0
        self._index = 0
        self._loops = 0
        self._frames_per_loop = 0

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"cannot open video {self.path}: not a video OpenCV can decode")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"cannot read video {self.path}: no decodable frame")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if fps and 0 < fps < 1000 else 10.0
        self._cap = cap
        self._index = 0

    def read(self) -> Frame | None:
        if self._cap is None:
            raise RuntimeError("source not opened")
        ok, image = self._cap.read()
        if not ok or image is None:
            if not self.loop or self._index == 0:
                return None
            self._loops += 1
            self._frames_per_loop = self._frames_per_loop or self._index
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
            if not ok:
                return None
        analysis, main = _analysis_pair(image, self.max_width)
        frame = Frame(analysis, self._index, self._index / self._fps, time.monotonic(), main=main)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class LiveCaptureSource(FrameSource):
    """A webcam (V4L2 index or device path) or a network stream; reopened after a loss."""

    live = True
    reconnectable = True

    def __init__(
        self,
        target: int | str,
        *,
        width: int = 640,
        height: int = 360,
        fps: float = 10.0,
        max_width: int = MAX_ANALYSIS_WIDTH,
        read_timeout_s: float = 5.0,
        open_timeout_s: float = 20.0,
    ):
        self.target = target
        self.width, self.height = width, height
        self._fps = fps
        self.max_width = max_width
        self.read_timeout_s = read_timeout_s
        self.open_timeout_s = open_timeout_s  # an RTSP handshake and stream probe over LTE take seconds
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        is_stream = isinstance(target, str) and "://" in target
        self.name = "stream" if is_stream else "webcam"

    @property
    def fps(self) -> float:
        return self._fps

    def describe(self) -> str:
        if self.name == "stream":
            return hide_userinfo(str(self.target))
        return f"webcam {self.target}"

    def open(self) -> None:
        if self.name == "stream":
            # TCP for RTSP (UDP loses packets on LTE): FFmpeg takes it only from this variable, read at
            # each open; a value the operator set is kept.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
            # Open and read timeouts so a dead camera cannot hang the capture thread.
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.read_timeout_s * 1000),
            ]
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        else:
            cap = (
                cv2.VideoCapture(self.target, cv2.CAP_V4L2)
                if isinstance(self.target, int)
                else cv2.VideoCapture(str(self.target), cv2.CAP_V4L2)
            )
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
                cap.set(cv2.CAP_PROP_FPS, self._fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a stale queue
        # Absent now is not absent for good: an IP camera boots after the Pi, a USB camera enumerates
        # late. SourceUnavailable lets the capture stage wait for it instead of stopping the agent.
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailable(f"cannot open {self.describe()}{self._why_not()}")
        ok, _ = cap.read()
        if not ok:
            cap.release()
            raise SourceUnavailable(f"{self.describe()} opened but delivered no frame")
        self._cap = cap

    def _why_not(self) -> str:
        """For a local camera, what the kernel says (missing device node, or no permission)."""
        if self.name == "stream":
            return ""
        device = f"/dev/video{self.target}" if isinstance(self.target, int) else str(self.target)
        if not os.path.exists(device):
            return f" ({device} does not exist)"
        if not os.access(device, os.R_OK | os.W_OK):
            return f" ({device}: permission denied; is the user in the video group?)"
        return ""

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceLost(f"{self.describe()} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceLost(f"{self.describe()} stopped delivering frames")
        analysis, main = _analysis_pair(image, self.max_width)
        now = time.monotonic()
        frame = Frame(analysis, self._index, now, now, main=main)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def webcam_available(index: int = 0) -> bool:
    """True when a V4L2 camera at `index` opens and delivers a frame (quietly, for auto mode)."""
    if not Path(f"/dev/video{index}").exists():
        return False
    cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()
