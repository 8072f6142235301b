"""Letterboxing frames into the model's input, and mapping boxes back."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """How a frame was placed in the model canvas: scale `ratio`, then offset (pad_x, pad_y)."""

    ratio: float
    pad_x: float
    pad_y: float

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) x1y1x2y2 boxes from canvas pixels back to frame pixels."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.ratio
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.ratio
        return out


def letterbox(
    image: np.ndarray,
    width: int,
    height: int,
    *,
    centre: bool,
    pad_value: int = 114,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio into a (height, width, 3) canvas; reuse `out` when given."""
    h, w = image.shape[:2]
    ratio = min(width / w, height / h)
    new_w, new_h = round(w * ratio), round(h * ratio)
    new_w, new_h = min(new_w, width), min(new_h, height)
    pad_x = (width - new_w) // 2 if centre else 0
    pad_y = (height - new_h) // 2 if centre else 0
    canvas = (
        out if out is not None and out.shape == (height, width, 3) else np.empty((height, width, 3), np.uint8)
    )
    canvas.fill(pad_value)
    if (new_w, new_h) == (w, h):
        canvas[pad_y : pad_y + h, pad_x : pad_x + w] = image
    else:
        cv2.resize(
            image,
            (new_w, new_h),
            dst=canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w],
            interpolation=cv2.INTER_LINEAR,
        )
    return canvas, Letterbox(ratio, pad_x, pad_y)
