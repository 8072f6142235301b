"""Small JPEG crops of detected objects: the only image data that leaves the node for an event."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.jpeg).hexdigest()

    def meta(self) -> dict[str, object]:
        return {"sha256": self.sha256, "bytes": len(self.jpeg), "size": [self.width, self.height]}


def crop_box(
    shape: tuple[int, ...], box_norm: tuple[float, float, float, float], margin: float
) -> tuple[int, int, int, int]:
    """Pixel crop (x1, y1, x2, y2) around a normalised box, with `margin` of its size on each side."""
    h, w = shape[:2]
    x1, y1, x2, y2 = box_norm
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return (
        max(0, int((x1 - mx) * w)),
        max(0, int((y1 - my) * h)),
        min(w, int(np.ceil((x2 + mx) * w))),
        min(h, int(np.ceil((y2 + my) * h))),
    )


def encode(image: np.ndarray, *, max_side: int, quality: int) -> Thumbnail | None:
    """Scale `image` so its longest side is at most `max_side` and JPEG-encode it."""
    h, w = image.shape[:2]
    if h < 2 or w < 2:
        return None
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(
        ".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 1]
    )
    if not ok:
        return None
    return Thumbnail(buf.tobytes(), image.shape[1], image.shape[0])


def make_thumbnail(
    frame_image: np.ndarray,
    box_norm: tuple[float, float, float, float],
    *,
    max_side: int = 320,
    quality: int = 80,
    margin: float = 0.15,
) -> Thumbnail | None:
    x1, y1, x2, y2 = crop_box(frame_image.shape, box_norm, margin)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return encode(frame_image[y1:y2, x1:x2], max_side=max_side, quality=quality)
