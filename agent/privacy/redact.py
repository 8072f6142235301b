"""Redaction of every image that leaves the node: privacy masks, then faces, then the fallback.

`Redactor` is the one place images are made safe to send:
- `filter(frame)`: the pipeline filter that blacks out masks before detection (analysis and main
  stream alike);
- `__call__(frame, box, objects)`: the thumbnailer the pipeline and the rules engine use;
- `redact_frame(image, objects)`: for full frames (the audited snapshot command, the status-page
  preview).

When face redaction is on but the face model is missing or fails, the configured fallback applies
(pixelate every person box, or refuse the image); an image is never sent silently unredacted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agent.capture.base import Frame
from agent.config.privacy import FacesConfig, Mask
from agent.detect import Detection
from agent.events.thumbs import LabelledBox, NormBox, Thumbnail, crop_box, jpeg, scale_to
from agent.privacy.faces import FaceDetector
from agent.privacy.masks import MaskSet

log = logging.getLogger(__name__)

PERSON_LABELS = frozenset({"person", "pedestrian", "people"})
MASKED_OBJECT_SHARE = 0.5  # a detection more masked than this is dropped before tracking


@dataclass(frozen=True)
class Redacted:
    """A redacted image (None: refused by the fallback) and what was applied to it."""

    image: np.ndarray | None
    redaction: tuple[str, ...]


def pixelate(region: np.ndarray, blocks: int) -> None:
    """Replace `region` in place by `blocks` coarse cells across its longer side."""
    h, w = region.shape[:2]
    if h < 1 or w < 1:
        return
    cells = max(1, blocks)
    sw, sh = (cells, max(1, round(cells * h / w))) if w >= h else (max(1, round(cells * w / h)), cells)
    small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
    region[:] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def obscure(region: np.ndarray, method: str) -> None:
    if method == "fill":
        region[:] = 0
    elif method == "blur":
        h, w = region.shape[:2]
        k = max(3, max(h, w) | 1)
        region[:] = cv2.GaussianBlur(region, (k, k), max(h, w) / 2.0)
        pixelate(region, 6)  # blur alone can be partly undone; coarse cells cannot
    else:
        pixelate(region, 5)


def _grow(box: Sequence[float], margin: float, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box[:4]
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return (
        max(0, int(np.floor(x1 - mx))),
        max(0, int(np.floor(y1 - my))),
        min(w, int(np.ceil(x2 + mx))),
        min(h, int(np.ceil(y2 + my))),
    )


class Redactor:
    """Masks and face redaction with a configured fallback; also the agent's thumbnailer."""

    def __init__(
        self,
        masks: MaskSet,
        faces: FaceDetector | None,
        cfg: FacesConfig,
        *,
        max_side: int = 320,
        quality: int = 80,
        margin: float = 0.15,
    ) -> None:
        self.masks = masks
        self.faces = faces
        self.cfg = cfg
        self.max_side, self.quality, self.margin = max_side, quality, margin
        self._lock = threading.Lock()
        self.counts = {"thumbnails": 0, "faces": 0, "fallback": 0, "refused": 0, "face_errors": 0}

    # -- live changes -------------------------------------------------------------------------------
    def set_masks(self, masks: Sequence[Mask] | MaskSet) -> MaskSet:
        """Swap the mask set (atomic: a frame sees the old or the new set, never a mix)."""
        self.masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
        return self.masks

    @property
    def face_mode(self) -> str:
        """What happens to faces now: detector, a fallback, or off (shown by status and the report)."""
        if not self.cfg.redact:
            return "off"
        return "detector" if self.faces is not None else self.cfg.fallback

    # -- the pipeline filter ------------------------------------------------------------------------
    def filter(self, frame: Frame) -> Frame:
        """Black out the masks in the analysis image (and the main stream) before anything looks at it."""
        masks = self.masks
        if not masks:
            return frame
        main = masks.apply(frame.main) if frame.main is not None else None
        return dataclasses.replace(frame, image=masks.apply(frame.image), main=main)

    def drop_masked(self, frame: Frame, detections: list[Detection]) -> list[Detection]:
        """Pipeline detection filter: an object mostly under a mask is not analysed or reported (the
        mask is a promise that this area is not watched; it also drops ghosts at a mask's edge)."""
        masks = self.masks
        if not masks or not detections:
            return detections
        shape = frame.image.shape
        return [d for d in detections if masks.coverage(shape, d.box) <= MASKED_OBJECT_SHARE]

    # -- images that leave the node -----------------------------------------------------------------
    def redact(
        self,
        image: np.ndarray,
        *,
        frame_shape: tuple[int, ...] | None = None,
        origin: tuple[int, int] = (0, 0),
        objects: Sequence[LabelledBox] = (),
        faces: bool = True,
        masks: MaskSet | None = None,
    ) -> Redacted:
        """Redact a copy of `image`, a crop at `origin` of a frame of `frame_shape` (default: the
        whole frame). `objects` (normalised boxes in the frame) drive the person fallback."""
        masks = masks if masks is not None else self.masks
        frame_shape = frame_shape or image.shape
        fh, fw = frame_shape[:2]
        ox, oy = origin
        h, w = image.shape[:2]
        out = image.copy()
        applied: list[str] = []
        region = masks.region(frame_shape, ox, oy, ox + w, oy + h)
        if region is not None:
            out[region] = 0
            applied.append("masks")
        if not (faces and self.cfg.redact):
            return Redacted(out, tuple(applied))
        detector = self.faces
        if detector is not None:
            try:
                found = detector.detect(out)
            except Exception:
                self.counts["face_errors"] += 1
                log.exception("face detector failed; applying the %s fallback", self.cfg.fallback)
            else:
                for face in found:
                    x1, y1, x2, y2 = _grow(face, self.cfg.margin, w, h)
                    if x2 > x1 and y2 > y1:
                        obscure(out[y1:y2, x1:x2], self.cfg.method)
                self.counts["faces"] += len(found)
                return self._remask(Redacted(out, (*applied, "faces")), region)
        return self._remask(self._fallback(out, applied, objects, (fw, fh), (ox, oy)), region)

    @staticmethod
    def _remask(result: Redacted, region: np.ndarray | None) -> Redacted:
        """Pixelation averages neighbouring cells: black the masks out again, last."""
        if region is not None and result.image is not None:
            result.image[region] = 0
        return result

    def _fallback(
        self,
        out: np.ndarray,
        applied: list[str],
        objects: Sequence[LabelledBox],
        frame_size: tuple[int, int],
        origin: tuple[int, int],
    ) -> Redacted:
        self.counts["fallback"] += 1
        fw, fh = frame_size
        h, w = out.shape[:2]
        people = []
        for label, (x1, y1, x2, y2) in objects:
            if label not in PERSON_LABELS:
                continue
            box = (x1 * fw - origin[0], y1 * fh - origin[1], x2 * fw - origin[0], y2 * fh - origin[1])
            px1, py1, px2, py2 = _grow(box, 0.05, w, h)
            if px2 > px1 and py2 > py1:
                people.append((px1, py1, px2, py2))
        if not people:
            return Redacted(out, tuple(applied))
        if self.cfg.fallback == "drop_person_thumbnails":
            self.counts["refused"] += 1
            return Redacted(None, (*applied, "refused"))
        for x1, y1, x2, y2 in people:
            pixelate(out[y1:y2, x1:x2], 8)
        return Redacted(out, (*applied, "pixelated"))

    def redact_frame(
        self, image: np.ndarray, objects: Sequence[LabelledBox] = (), *, faces: bool = True
    ) -> Redacted:
        """A whole frame made safe to leave the node (snapshot command) or to show (preview).

        Callers that send it must also record it in the audit log (`AuditLog.record("snapshot.sent",
        actor, ...)`); `faces=False` is for the local preview only.
        """
        return self.redact(image, objects=objects, faces=faces)

    def render(self, frame: Frame, box: NormBox, objects: Sequence[LabelledBox]) -> Redacted | None:
        """The thumbnail image before encoding: crop, redact at full resolution, shrink, re-mask.
        None when the crop is degenerate; `Redacted.image` None when the fallback refused it."""
        source = frame.crop_source
        x1, y1, x2, y2 = crop_box(source.shape, box, self.margin)
        if x2 - x1 < 2 or y2 - y1 < 2:
            return None
        masks = self.masks  # one set for the whole thumbnail, even if it is swapped meanwhile
        result = self.redact(
            source[y1:y2, x1:x2], frame_shape=source.shape, origin=(x1, y1), objects=objects, masks=masks
        )
        if result.image is None:
            return result
        small = scale_to(result.image, self.max_side)
        region = masks.region(source.shape, x1, y1, x2, y2)
        if region is not None and small.shape[:2] != region.shape:
            # a thumbnail pixel that overlaps a masked pixel at all stays black after the shrink
            grown = cv2.resize(
                region.astype(np.uint8) * 255, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA
            )
            small = small.copy()
            small[grown > 0] = 0
        return Redacted(small, result.redaction)

    def __call__(self, frame: Frame, box: NormBox, objects: Sequence[LabelledBox]) -> Thumbnail | None:
        """The agent's thumbnailer: `render()` then JPEG; `thumb.redaction` says what was applied."""
        result = self.render(frame, box, objects)
        if result is None or result.image is None:
            return None
        thumb = jpeg(result.image, self.quality, result.redaction)
        if thumb is not None:
            with self._lock:
                self.counts["thumbnails"] += 1
        return thumb

    def status(self) -> dict[str, object]:
        return {"masks": self.masks.names, "faces": self.face_mode, **self.counts}
