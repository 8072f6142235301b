"""Privacy masks: polygons blacked out before detection and in every image that leaves the node.

Rasterisation is deliberately conservative: every pixel the polygon touches at all is masked (the
filled polygon grown by one pixel), so no sliver of a window or a garden survives at any
resolution. A mask set is immutable; live updates swap the whole set.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np

from agent.config.privacy import Mask

SUBPIXEL_BITS = 4
_DILATE = np.ones((3, 3), np.uint8)


SUPERSAMPLE = 3  # odd, so each pixel's centre is one of the samples


def rasterise(polygons: Sequence[Sequence[tuple[float, float]]], height: int, width: int) -> np.ndarray:
    """Boolean (height, width) array, True where any normalised polygon touches a pixel.

    Drawn at three times the resolution (fill and outline), so slivers thinner than a pixel row and
    edges along the image border are caught, then any touched sub-pixel masks its pixel, and the
    result is grown by one pixel.
    """
    k = SUPERSAMPLE
    canvas = np.zeros((height * k, width * k), np.uint8)
    scale = 1 << SUBPIXEL_BITS
    for polygon in polygons:
        # pixel centres sit at integer coordinates in OpenCV: normalised x maps to x * W - 0.5
        pts = np.array([[(x * width * k - 0.5) * scale, (y * height * k - 0.5) * scale] for x, y in polygon])
        outline = np.round(pts).astype(np.int32)
        cv2.fillPoly(canvas, [outline], 1, cv2.LINE_8, SUBPIXEL_BITS)
        cv2.polylines(canvas, [outline], True, 1, 1, cv2.LINE_8, SUBPIXEL_BITS)
    touched = canvas.reshape(height, k, width, k).max(axis=(1, 3))
    return cv2.dilate(touched, _DILATE).astype(bool)


class MaskSet:
    """Immutable set of masks with a small cache of rasterised arrays per image size."""

    def __init__(self, masks: Sequence[Mask] = ()) -> None:
        self.masks = tuple(masks)
        self._polygons = [m.polygon for m in self.masks]
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.masks)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.masks]

    def array(self, height: int, width: int) -> np.ndarray | None:
        """Where to black out an image of this size (None: no masks)."""
        if not self.masks:
            return None
        with self._lock:
            found = self._cache.get((height, width))
            if found is None:
                if len(self._cache) >= 8:  # analysis, main stream, a few thumbnail sizes
                    self._cache.pop(next(iter(self._cache)))
                found = self._cache[(height, width)] = rasterise(self._polygons, height, width)
        return found

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A copy of a whole frame with the masks blacked out (the image itself when there are none)."""
        region = self.array(*image.shape[:2])
        if region is None:
            return image
        out = image.copy()
        out[region] = 0
        return out

    def region(self, frame_shape: tuple[int, ...], x1: int, y1: int, x2: int, y2: int) -> np.ndarray | None:
        """The mask for a crop (x1..x2, y1..y2) of a frame, or None when no mask reaches into it."""
        full = self.array(*frame_shape[:2])
        if full is None:
            return None
        part = full[y1:y2, x1:x2]
        return part if part.any() else None

    def coverage(self, frame_shape: tuple[int, ...], box: tuple[float, float, float, float]) -> float:
        """Share of a pixel box (x1, y1, x2, y2) that lies under a mask."""
        full = self.array(*frame_shape[:2])
        if full is None:
            return 0.0
        h, w = full.shape
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
        if x2 <= x1 or y2 <= y1:
            return 0.0
        return float(full[y1:y2, x1:x2].mean())
