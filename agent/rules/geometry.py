"""Plane geometry for zones and lines, in pixels of the frame being analysed.

Pure functions over a handful of points: a few zones and tracks per frame cost microseconds, so
there is no need for anything cleverer than ray casting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Pt = tuple[float, float]
PixelBox = tuple[float, float, float, float]
CrossingDirection = Literal["left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"]


def to_pixels(points: Sequence[Pt], width: int, height: int) -> list[Pt]:
    return [(x * width, y * height) for x, y in points]


def anchor_point(box: PixelBox, anchor: str) -> Pt:
    """The point of a box that stands for the object: bottom centre (feet, wheels) or centre."""
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, y2 if anchor == "bottom" else (y1 + y2) / 2)


def inside(point: Pt, polygon: Sequence[Pt]) -> bool:
    """Ray casting; points exactly on an edge may go either way (debouncing absorbs that)."""
    x, y = point
    result = False
    j = len(polygon) - 1
    for i in range(len(polygon)):
        xi, yi = polygon[i]
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            result = not result
        j = i
    return result


def signed_distance(point: Pt, a: Pt, b: Pt) -> float:
    """Distance of `point` from the infinite line a→b; positive on the side the normal points to.

    The normal is (dy, -dx): for a line drawn top to bottom it points right, for one drawn
    right to left it points down (image coordinates, y grows downwards).
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy)
    return ((point[0] - a[0]) * dy - (point[1] - a[1]) * dx) / length


def crosses_segment(p: Pt, q: Pt, a: Pt, b: Pt, slack: float = 0.0) -> bool:
    """Whether the move p→q passes the segment a–b (extended by `slack` pixels at both ends)."""
    dpx, dpy = q[0] - p[0], q[1] - p[1]
    dlx, dly = b[0] - a[0], b[1] - a[1]
    denom = dpx * dly - dpy * dlx
    if abs(denom) < 1e-12:
        return False
    # p + s * (q - p) == a + u * (b - a)
    s = ((a[0] - p[0]) * dly - (a[1] - p[1]) * dlx) / denom
    u = ((a[0] - p[0]) * dpy - (a[1] - p[1]) * dpx) / denom
    extra = slack / max(math.hypot(dlx, dly), 1e-9)
    return 0.0 <= s <= 1.0 and -extra <= u <= 1.0 + extra


def direction_name(move: Pt, a: Pt, b: Pt) -> CrossingDirection:
    """Name a crossing by the image axis the line's normal is closest to (see Line.directions)."""
    nx, ny = b[1] - a[1], -(b[0] - a[0])
    along = move[0] * nx + move[1] * ny
    sign = 1.0 if along >= 0 else -1.0
    if abs(b[1] - a[1]) >= abs(b[0] - a[0]):  # mostly vertical line: crossed sideways
        return "left_to_right" if sign * nx > 0 else "right_to_left"
    return "top_to_bottom" if sign * ny > 0 else "bottom_to_top"


def box_area_share(box: PixelBox, width: int, height: int) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]) / float(width * height)
