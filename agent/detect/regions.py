"""Motion regions: detect in crops at the model's input size instead of the whole frame shrunk to it.

A 416×416 model looking at a whole 1280×720 frame sees it at a third of its size, so a person 110 px
tall becomes 37 px and is often missed. A 416×416 crop around the motion sees that person at full
size, for the same cost per detector run. This is the trick Frigate uses (its motion regions at the
model's input size). Crops are planned from the motion boxes and the predicted boxes of moving
tracks; when they would be too many, too large or cover most of the frame anyway, the whole frame is
used instead (None), and keyframes always use the whole frame so nothing outside motion is missed
for long.

Only models trained at many scales (COCO models such as YOLOX-Nano) gain: a model trained on whole
frames of one camera (vigil-synth) sees objects at a size it never learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from agent.detect.decoders import nms
from agent.detect.detector import Detection, Detector

Box = tuple[float, float, float, float]

MARGIN = 0.25  # context around each box, share of its size on each side
MIN_MARGIN_PX = 8.0
MAX_COVER = 0.8  # crops covering more of the frame than this: the whole frame costs less
MIN_GAIN = 1.15  # crops must show objects at least this much larger than the whole frame does
EDGE_PX = 2.0  # a box this close to a crop's inner edge was cut by it


@dataclass(frozen=True)
class Region:
    """A crop of the frame in whole pixels (x1, y1) inclusive to (x2, y2) exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def area(self) -> int:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def overlaps(self, other: Region) -> bool:
        return self.x1 < other.x2 and other.x1 < self.x2 and self.y1 < other.y2 and other.y1 < self.y2


def _expand(box: Box) -> Box:
    x1, y1, x2, y2 = box
    mx = max(MIN_MARGIN_PX, (x2 - x1) * MARGIN)
    my = max(MIN_MARGIN_PX, (y2 - y1) * MARGIN)
    return (x1 - mx, y1 - my, x2 + mx, y2 + my)


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _fit(box: Box, frame_w: int, frame_h: int, in_w: int, in_h: int) -> Region | None:
    """The smallest crop with the model's aspect ratio, at least its input size, holding `box`,
    moved inside the frame; None when no such crop fits in the frame."""
    aspect = in_w / in_h
    bw, bh = box[2] - box[0], box[3] - box[1]
    w = max(float(in_w), bw, bh * aspect)
    h = w / aspect
    w, h = int(np.ceil(w)), int(np.ceil(h))
    if w > frame_w or h > frame_h:
        return None
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x1 = int(min(max(0.0, round(cx - w / 2)), frame_w - w))
    y1 = int(min(max(0.0, round(cy - h / 2)), frame_h - h))
    return Region(x1, y1, x1 + w, y1 + h)


def plan_regions(
    boxes: Sequence[Box],
    frame_w: int,
    frame_h: int,
    in_w: int,
    in_h: int,
    *,
    max_regions: int = 2,
) -> list[Region] | None:
    """Crops that together hold every box (with margin), or None: use the whole frame.

    Boxes whose crops overlap are merged into one crop (one detector run sees the whole object
    group); the plan is None when the frame is not much larger than the model input, when a group
    is too large for a crop, when more than `max_regions` crops are needed or when they would
    cover most of the frame.
    """
    if not boxes or min(in_w / frame_w, in_h / frame_h) * MIN_GAIN > 1.0:
        return None
    groups = [_expand(b) for b in boxes]
    while True:
        regions = [_fit(g, frame_w, frame_h, in_w, in_h) for g in groups]
        if any(r is None for r in regions):
            return None
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if regions[i].overlaps(regions[j]):  # type: ignore[union-attr,arg-type]  # no None: checked above
                    groups[i] = _union(groups[i], groups[j])
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
        if not merged:
            break
    planned = [r for r in regions if r is not None]
    if len(planned) > max_regions or sum(r.area for r in planned) > MAX_COVER * frame_w * frame_h:
        return None
    return planned


def _cut(box: Box, region: Region, frame_w: int, frame_h: int) -> bool:
    """Whether `box` (frame pixels) touches an edge of `region` that is not an edge of the frame."""
    return (
        (region.x1 > 0 and box[0] <= region.x1 + EDGE_PX)
        or (region.y1 > 0 and box[1] <= region.y1 + EDGE_PX)
        or (region.x2 < frame_w and box[2] >= region.x2 - EDGE_PX)
        or (region.y2 < frame_h and box[3] >= region.y2 - EDGE_PX)
    )


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class RegionResult:
    detections: list[Detection]
    runs: int  # detector runs this frame took
    full_frame: bool  # whether the whole frame was analysed (planned, or to recover a cut object)


def detect_regions(
    detector: Detector,
    image: np.ndarray,
    regions: Sequence[Region],
    *,
    iou: float = 0.45,
    known: Sequence[Box] = (),
    min_area: float = 0.0,
) -> RegionResult:
    """Run `detector` on each crop and map the boxes back to frame pixels.

    Objects cut by a crop's inner edge are not kept as they are: one that overlaps a `known` box
    (a stationary track, refreshed on keyframes) is dropped, any other makes the whole frame be
    analysed once more, so an object straddling a crop is never reported as a fragment. Duplicates
    from overlapping crops are merged by per-class non-maximum suppression. `min_area` (frame
    pixels) applies the detector's smallest-box rule to the frame, as on whole frames, not to the crop.
    """
    h, w = image.shape[:2]
    kept: list[Detection] = []
    rerun = False
    for region in regions:
        for det in detector.detect(image[region.y1 : region.y2, region.x1 : region.x2]):
            x1, y1, x2, y2 = det.box
            box = (x1 + region.x1, y1 + region.y1, x2 + region.x1, y2 + region.y1)
            if _cut(box, region, w, h):
                rerun = rerun or not any(_overlap(box, k) for k in known)
                continue
            if (box[2] - box[0]) * (box[3] - box[1]) >= min_area:
                kept.append(replace(det, box=box))
    runs = len(regions)
    if rerun:
        kept.extend(detector.detect(image))
        runs += 1
    if len(kept) > 1:
        boxes = np.array([d.box for d in kept], np.float32)
        scores = np.array([d.score for d in kept], np.float32)
        classes = np.array([d.class_id for d in kept], np.int64)
        kept = [kept[i] for i in nms(boxes, scores, iou, classes)]
    return RegionResult(kept, runs, rerun)
