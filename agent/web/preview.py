"""The live preview: the newest analysed frame, redacted, with boxes, labels, track ids, zones, lines
and masks drawn on it.

Cheap by construction: nothing is encoded unless a client asks, all clients share one cached image,
and at most `http.preview_fps` images are encoded per second however many watch. The image goes
through the privacy stage's `Redactor.redact_frame` first (masks always; faces unless
`http.preview_faces` is false), then the masks are blacked out again at the preview size, so the
preview never shows more than a snapshot would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config.schema import Config
from agent.health.frames import FrameTap, Tapped
from agent.health.privacy import PrivacyAccess

log = logging.getLogger(__name__)

FONT = cv2.FONT_HERSHEY_SIMPLEX
TRACK = (60, 220, 60)  # BGR
STILL = (0, 190, 255)
TENTATIVE = (200, 200, 200)
ZONE = (255, 200, 0)
LINE = (0, 255, 255)
MASK = (200, 80, 255)


@dataclass(frozen=True)
class PreviewImage:
    seq: int
    jpeg: bytes
    frame_index: int
    frame_mono: float
    encoded_mono: float


def _polyline(image: np.ndarray, points: Sequence[Sequence[float]], color: tuple[int, int, int], closed: bool) -> None:
    h, w = image.shape[:2]
    pts = np.array([[x * w, y * h] for x, y in points], np.int32)
    cv2.polylines(image, [pts], closed, color, 2, cv2.LINE_AA)


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Text on a dark plate, kept inside the image (readable over any scene)."""
    scale, thick = 0.5, 1
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
    h, w = image.shape[:2]
    x = int(min(max(0, x), max(0, w - tw - 4)))
    y = int(min(max(th + 4, y), h - 2))
    cv2.rectangle(image, (x, y - th - 4), (x + tw + 4, y + base - 2), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 2, y - 2), FONT, scale, color, thick, cv2.LINE_AA)


class PreviewRenderer:
    def __init__(self, tap: FrameTap, privacy: PrivacyAccess, config: Callable[[], Config]) -> None:
        self.tap = tap
        self.privacy = privacy
        self.config = config
        self._render_lock = threading.Lock()
        self._cache: PreviewImage | None = None
        self._stop = threading.Event()
        self.encoded = 0

    def stop(self) -> None:
        self._stop.set()
        self.tap.wake_all()

    def get(self, after: int, timeout: float) -> PreviewImage | None:
        """A preview newer than frame `after`, waiting up to `timeout` (None: nothing new)."""
        deadline = time.monotonic() + timeout
        cached = self._cache
        if cached is not None and cached.seq > after:
            return cached
        with self._render_lock:
            cached = self._cache
            if cached is not None and cached.seq > after:
                return cached  # another client rendered it while we waited for the lock
            min_gap = 1.0 / self.config().http.preview_fps
            if cached is not None:
                pause = cached.encoded_mono + min_gap - time.monotonic()
                if pause > 0 and self._stop.wait(min(pause, max(0.0, deadline - time.monotonic()))):
                    return None  # rate cap: at most preview_fps encodes whoever watches
            tapped = self.tap.wait_newer(max(after, cached.seq if cached else 0), max(0.0, deadline - time.monotonic()))
            if tapped is None or self._stop.is_set():
                return None
            image = self.render(tapped)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config().http.preview_quality])
            if not ok:
                return None
            self.encoded += 1
            frame = tapped.frame
            self._cache = PreviewImage(tapped.seq, buf.tobytes(), frame.index, frame.mono, time.monotonic())
            return self._cache

    def render(self, tapped: Tapped) -> np.ndarray:
        cfg = self.config()
        redactor = self.privacy.redactor
        frame = tapped.frame
        result = redactor.redact_frame(frame.image, tapped.objects(), faces=cfg.http.preview_faces)
        src_h, src_w = frame.image.shape[:2]
        width = min(cfg.http.preview_width, max(src_w, 160))
        height = max(1, round(src_h * width / src_w))
        if result.image is None:
            image = np.full((height, width, 3), 40, np.uint8)
            _label(image, "preview withheld: people in view and no face model", 8, height // 2, (255, 255, 255))
        else:
            interpolation = cv2.INTER_AREA if width < src_w else cv2.INTER_LINEAR
            image = cv2.resize(result.image, (width, height), interpolation=interpolation)
        self._draw(image, tapped, cfg, src_w, src_h)
        region = redactor.masks.array(height, width)
        if region is not None:
            image[region] = 0  # after shrinking and after drawing: nothing shows through a mask
        for mask in redactor.masks.masks:
            _polyline(image, mask.polygon, MASK, True)
            x, y = mask.polygon[0]
            _label(image, f"mask {mask.name}", int(x * width), int(y * height) + 14, MASK)
        _label(image, f"frame {tapped.frame.index}  {time.strftime('%H:%M:%S')}", 4, height - 4, (255, 255, 255))
        return image

    def _draw(self, image: np.ndarray, tapped: Tapped, cfg: Config, src_w: int, src_h: int) -> None:
        h, w = image.shape[:2]
        for zone in cfg.rules.zones:
            _polyline(image, zone.polygon, ZONE, True)
            x, y = zone.polygon[0]
            _label(image, zone.name, int(x * w), int(y * h) + 14, ZONE)
        for line in cfg.rules.lines:
            _polyline(image, line.points, LINE, False)
            x, y = line.points[0]
            _label(image, line.name, int(x * w), int(y * h), LINE)
        sx, sy = w / src_w, h / src_h
        for track in tapped.tracks:
            color = (STILL if track.stationary else TRACK) if track.confirmed else TENTATIVE
            x1, y1, x2, y2 = (int(track.box[0] * sx), int(track.box[1] * sy), int(track.box[2] * sx),
                              int(track.box[3] * sy))
            cv2.rectangle(image, (x1, y1), (x2, y2), color, 2 if track.confirmed else 1)
            if track.confirmed:
                _label(image, f"{track.label} #{track.track} {track.score:.2f}", x1, y1 - 2, color)
