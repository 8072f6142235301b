"""Small JPEG crops of detected objects: the only image data that leaves the node for an event.

Every thumbnail is made by a *thumbnailer*. The pipeline's default one only crops and encodes; the
privacy stage (agent.privacy) replaces it with one that applies privacy masks and face redaction
and says so in `Thumbnail.redaction`, which travels in the event as `thumb.redaction`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from agent.events.types import ThumbMeta

if TYPE_CHECKING:
    from agent.capture.base import Frame

NormBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in 0..1
LabelledBox = tuple[str, NormBox]


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    width: int
    height: int
    redaction: tuple[str, ...] = ()  # what was applied before encoding: masks, faces, pixelated

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.jpeg).hexdigest()

    def meta(self) -> ThumbMeta:
        return {
            "sha256": self.sha256,
            "bytes": len(self.jpeg),
            "size": [self.width, self.height],
            "redaction": list(self.redaction),
        }


class Thumbnailer(Protocol):
    def __call__(self, frame: Frame, box: NormBox, objects: Sequence[LabelledBox]) -> Thumbnail | None:
        """A thumbnail of `box` in `frame`; `objects` are every tracked object of the frame (label, box),
        so redaction can treat people who happen to be in the crop as well."""


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


def scale_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink `image` so its longest side is at most `max_side` (never enlarges)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image
    return cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )


def jpeg(image: np.ndarray, quality: int, redaction: Sequence[str] = ()) -> Thumbnail | None:
    ok, buf = cv2.imencode(
        ".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 1]
    )
    if not ok:
        return None
    return Thumbnail(buf.tobytes(), image.shape[1], image.shape[0], tuple(redaction))


def encode(image: np.ndarray, *, max_side: int, quality: int) -> Thumbnail | None:
    """Scale `image` so its longest side is at most `max_side` and JPEG-encode it."""
    h, w = image.shape[:2]
    if h < 2 or w < 2:
        return None
    return jpeg(scale_to(image, max_side), quality)


def make_thumbnail(
    frame_image: np.ndarray,
    box_norm: tuple[float, float, float, float],
    *,
    max_side: int = 320,
    quality: int = 80,
    margin: float = 0.15,
) -> Thumbnail | None:
    """Crop and encode without any redaction (the privacy stage's thumbnailer is what the agent uses)."""
    x1, y1, x2, y2 = crop_box(frame_image.shape, box_norm, margin)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return encode(frame_image[y1:y2, x1:x2], max_side=max_side, quality=quality)


class CropThumbnailer:
    """The pipeline's default thumbnailer: crop and encode, no redaction (tests and bare pipelines)."""

    def __init__(self, *, max_side: int = 320, quality: int = 80, margin: float = 0.15) -> None:
        self.max_side, self.quality, self.margin = max_side, quality, margin

    def __call__(self, frame: Frame, box: NormBox, objects: Sequence[LabelledBox]) -> Thumbnail | None:
        return make_thumbnail(
            frame.crop_source, box, max_side=self.max_side, quality=self.quality, margin=self.margin
        )
