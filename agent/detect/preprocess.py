"""Letterboxing frames into the model's input, and mapping boxes back.

`InputWriter` is what the detector uses on every frame: it resizes once, straight into a reused
buffer, and writes only the image part of the reused input tensor (the padding is written when the
frame size changes, not per frame). `letterbox()` is the plain version for tools and training.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.detect.card import InputSpec


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


def placement(w: int, h: int, width: int, height: int, *, centre: bool) -> tuple[int, int, Letterbox]:
    """Resized size (new_w, new_h) and placement of a w×h frame in a width×height canvas."""
    ratio = min(width / w, height / h)
    new_w, new_h = min(round(w * ratio), width), min(round(h * ratio), height)
    pad_x = (width - new_w) // 2 if centre else 0
    pad_y = (height - new_h) // 2 if centre else 0
    return new_w, new_h, Letterbox(ratio, pad_x, pad_y)


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
    new_w, new_h, lb = placement(w, h, width, height, centre=centre)
    pad_x, pad_y = int(lb.pad_x), int(lb.pad_y)
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
    return canvas, lb


class InputWriter:
    """Writes BGR uint8 frames into one reused float32 model input tensor, as the card describes.

    Per frame it does one resize (into a reused buffer) and one conversion of the image area into
    the tensor: no canvas, no transposed copy, no colour conversion (RGB models get their planes in
    reverse order), and normalisation only where the image is. The padding, already normalised, is
    rewritten only when the frame size changes, because the image area then moves.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.nchw = spec.layout == "NCHW"
        shape = (1, 3, spec.height, spec.width) if self.nchw else (1, spec.height, spec.width, 3)
        self.tensor = np.empty(shape, np.float32)
        self._scale = np.float32(spec.scale)
        self._mean = np.array(spec.mean, np.float32)
        self._std = np.array(spec.std, np.float32)
        self._normalise = spec.scale != 1.0 or any(spec.mean) or any(s != 1.0 for s in spec.std)
        # channel i of the tensor comes from BGR plane _source[i]
        self._source = (2, 1, 0) if spec.color == "RGB" else (0, 1, 2)
        self._resized: np.ndarray | None = None
        self._planes: list[np.ndarray] = []
        self._placed_for: tuple[int, int] | None = None
        self._layout: tuple[int, int, Letterbox] | None = None

    def _pad(self) -> None:
        """Fill the whole tensor with the normalised pad value of each channel."""
        value = (np.float32(self.spec.pad_value) * self._scale - self._mean) / self._std
        if self.nchw:
            for c in range(3):
                self.tensor[0, c].fill(value[c])
        else:
            self.tensor[0] = value

    def __call__(self, image: np.ndarray) -> Letterbox:
        """Place `image` (H×W×3 BGR uint8, any strides) in the tensor; returns how it was placed."""
        spec = self.spec
        h, w = image.shape[:2]
        if self._placed_for != (h, w) or self._layout is None:
            self._layout = placement(w, h, spec.width, spec.height, centre=spec.letterbox == "centre")
            new_w, new_h, _ = self._layout
            self._resized = np.empty((new_h, new_w, 3), np.uint8)
            self._planes = [np.empty((new_h, new_w), np.uint8) for _ in range(3)]
            self._pad()
            self._placed_for = (h, w)
        new_w, new_h, lb = self._layout
        assert self._resized is not None
        if (new_w, new_h) == (w, h):
            resized = image
        else:
            resized = cv2.resize(image, (new_w, new_h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        x, y = int(lb.pad_x), int(lb.pad_y)
        if self.nchw:
            cv2.split(np.ascontiguousarray(resized), self._planes)
            for c, source in enumerate(self._source):
                area = self.tensor[0, c, y : y + new_h, x : x + new_w]
                np.copyto(area, self._planes[source], casting="unsafe")
                if self._normalise:
                    area *= self._scale
                    area -= self._mean[c]
                    area /= self._std[c]
        else:
            area = self.tensor[0, y : y + new_h, x : x + new_w]
            np.copyto(area, resized[..., ::-1] if spec.color == "RGB" else resized, casting="unsafe")
            if self._normalise:
                area *= self._scale
                area -= self._mean
                area /= self._std
        return lb
