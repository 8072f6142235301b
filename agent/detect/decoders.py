"""Turn raw detector outputs into (boxes, scores, class ids) in model-canvas pixels.

Each decoder is a pure function of the output tensor, so it is tested without onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from agent.detect.card import ModelCard

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N,4 x1y1x2y2), scores (N,), classes (N,)
_EMPTY: Decoded = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@lru_cache(maxsize=8)
def yolox_grid(width: int, height: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (x, y) and stride per output row, in YOLOX's order (stride, then row-major)."""
    cells, scale = [], []
    for s in strides:
        gh, gw = height // s, width // s
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        scale.append(np.full((gh * gw, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(scale).astype(np.float32)


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], 1)


def _best_class(
    class_scores: np.ndarray, objectness: np.ndarray | None, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = class_scores.argmax(1)
    scores = class_scores[np.arange(len(classes)), classes]
    if objectness is not None:
        scores = scores * objectness
    keep = scores >= threshold
    return keep, scores[keep].astype(np.float32), classes[keep]


def decode_yolox(outputs: list[np.ndarray], card: ModelCard, threshold: float) -> Decoded:
    pred = outputs[0].reshape(-1, outputs[0].shape[-1])
    objectness = pred[:, 4]
    candidates = objectness >= threshold  # score = obj * cls <= obj: a cheap first cut
    if not candidates.any():
        return _EMPTY
    pred = pred[candidates]
    keep, scores, classes = _best_class(pred[:, 5:], pred[:, 4], threshold)
    if not keep.any():
        return _EMPTY
    pred = pred[keep]
    if card.output.boxes == "grid":
        cells, strides = yolox_grid(card.input.width, card.input.height, tuple(card.output.strides))
        cells, strides = cells[candidates][keep], strides[candidates][keep]
        xy = (pred[:, :2] + cells) * strides
        wh = np.exp(np.clip(pred[:, 2:4], -10, 10)) * strides
        xywh = np.concatenate([xy, wh], 1)
    else:
        xywh = pred[:, :4]
    return _xywh_to_xyxy(xywh).astype(np.float32), scores, classes


def decode_yolov5(outputs: list[np.ndarray], card: ModelCard, threshold: float) -> Decoded:
    pred = outputs[0].reshape(-1, outputs[0].shape[-1])
    pred = pred[pred[:, 4] >= threshold]
    keep, scores, classes = _best_class(pred[:, 5:], pred[:, 4], threshold)
    if not keep.any():
        return _EMPTY
    return _xywh_to_xyxy(pred[keep, :4]).astype(np.float32), scores, classes


def decode_yolov8(outputs: list[np.ndarray], card: ModelCard, threshold: float) -> Decoded:
    pred = outputs[0]
    pred = pred.reshape(pred.shape[-2], pred.shape[-1])
    if pred.shape[0] == 4 + len(card.labels):  # (4 + C, N) as exported by ultralytics
        pred = pred.T
    keep, scores, classes = _best_class(pred[:, 4:], None, threshold)
    if not keep.any():
        return _EMPTY
    return _xywh_to_xyxy(pred[keep, :4]).astype(np.float32), scores, classes


def decode_centerface(outputs: list[np.ndarray], card: ModelCard, threshold: float) -> Decoded:
    """CenterFace stride-4 maps: heatmap, log-scale (h, w), offset (y, x)."""
    heat, scale, offset = outputs[0][0, 0], outputs[1][0], outputs[2][0]
    ys, xs = np.nonzero(heat >= threshold)
    if len(ys) == 0:
        return _EMPTY
    h = np.exp(scale[0, ys, xs]) * 4
    w = np.exp(scale[1, ys, xs]) * 4
    cy = (ys + offset[0, ys, xs] + 0.5) * 4
    cx = (xs + offset[1, ys, xs] + 0.5) * 4
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)
    return boxes, heat[ys, xs].astype(np.float32), np.zeros(len(ys), np.int64)


DECODERS: dict[str, Callable[[list[np.ndarray], ModelCard, float], Decoded]] = {
    "yolox": decode_yolox,
    "yolov5": decode_yolov5,
    "yolov8": decode_yolov8,
    "centerface": decode_centerface,
}


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None
) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (per class when `classes` is given)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    work = boxes.astype(np.float32)
    if classes is not None:  # shift each class into its own region so classes never suppress each other
        offset = (work.max() + 1.0) * classes.astype(np.float32)
        work = work + offset[:, None]
    x1, y1, x2, y2 = work.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, np.int64)
