"""The face detector used for redaction: CenterFace (ONNX) run on the image about to leave the node.

The upstream CenterFace export declares its input as [10, 3, 32, 32] and lists its weights among
the graph inputs. The file on disk is kept pristine (its sha256 is what the manifest and the model
card recognise); when it is loaded, the `onnx` package rewrites the image input and the outputs
to [1, 3, H, W] with symbolic H and W, and drops the weights from the inputs (which silences
onnxruntime's warnings and lets it fold constants). One session then serves every crop size: a crop
is padded to multiples of 32, small crops are enlarged (small faces are found better), and whole
frames are cut in overlapping tiles so a face in a 1080p main stream stays large enough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from agent import models
from agent.detect.card import CardError, ModelCard, ModelInfo
from agent.detect.decoders import DECODERS, nms
from agent.detect.detector import open_session
from agent.detect.manifest import find_card

log = logging.getLogger(__name__)

FaceBox = tuple[float, float, float, float, float]  # x1, y1, x2, y2, score in image pixels


class FaceModelError(Exception):
    """The face model is missing or unusable; the message says which and what to do."""


def dynamic_centerface(path: Path, input_name: str) -> bytes:
    """The model with [1, 3, H, W] input and weights removed from the graph inputs, serialised."""
    import onnx  # lazy: only when a face model is actually loaded

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if not any(i.name == input_name for i in inputs):
        raise FaceModelError(f"{path.name} has no image input {input_name!r}")
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == input_name and len(dims) == 4:
            dims[0].dim_value = 1
            dims[2].dim_param, dims[3].dim_param = "H", "W"
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[0].dim_value = 1
            dims[2].dim_param, dims[3].dim_param = "h", "w"
    return model.SerializeToString()


class FaceDetector:
    """Finds faces in BGR images of any size; thread-safe (onnxruntime sessions are)."""

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        sha256: str,
        *,
        score_threshold: float = 0.3,
        threads: int = 1,
        enlarge_to: int = 320,
        tile: int = 640,
    ) -> None:
        if card.task != "face":
            raise FaceModelError(f"{path.name} is a {card.task} model, not a face detector")
        if card.output.decoder != "centerface":
            raise FaceModelError(f"face model {path.name}: only the centerface decoder is supported")
        self.path, self.card, self.sha256 = path, card, sha256
        self.score_threshold = score_threshold
        self.enlarge_to, self.tile = enlarge_to, tile
        self._input = card.input.name or "input.1"
        try:
            self._session = open_session(dynamic_centerface(path, self._input), threads)
        except CardError as exc:
            raise FaceModelError(str(exc)) from None
        self._decode = DECODERS["centerface"]
        self.runs = 0

    def info(self) -> ModelInfo:
        return {"name": self.card.name, "sha256": self.sha256}

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in `image` in its own pixel coordinates, best first."""
        h, w = image.shape[:2]
        if h < 4 or w < 4:
            return []
        scale = min(4.0, max(1.0, self.enlarge_to / max(h, w)))
        work = image if scale == 1.0 else cv2.resize(
            image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR
        )
        found: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for ox, oy, tile in _tiles(work, self.tile, overlap=self.tile // 5):
            boxes, tile_scores = self._run(tile)
            if len(boxes):
                boxes[:, [0, 2]] += ox
                boxes[:, [1, 3]] += oy
                found.append(boxes)
                scores.append(tile_scores)
        if not found:
            return []
        boxes, all_scores = np.concatenate(found), np.concatenate(scores)
        keep = nms(boxes, all_scores, 0.3)
        return [
            (float(b[0] / scale), float(b[1] / scale), float(b[2] / scale), float(b[3] / scale), float(s))
            for b, s in zip(boxes[keep], all_scores[keep], strict=True)
        ]

    def _run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        tensor = np.zeros((1, 3, ph, pw), np.float32)
        pixels = image[..., ::-1] if self.card.input.color == "RGB" else image
        tensor[0, :, :h, :w] = pixels.transpose(2, 0, 1)
        outputs = self._session.run(None, {self._input: tensor})
        self.runs += 1
        boxes, scores, _ = self._decode(outputs, self.card, self.score_threshold)
        if len(boxes):
            keep = nms(boxes, scores, 0.3)
            boxes, scores = boxes[keep], scores[keep]
        return boxes.astype(np.float32), scores


def _tiles(image: np.ndarray, size: int, overlap: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(x, y, view) tiles of at most size×size covering the image, overlapping so faces are whole."""
    h, w = image.shape[:2]
    step = max(1, size - overlap)
    ys = list(range(0, max(1, h - overlap), step)) if h > size else [0]
    xs = list(range(0, max(1, w - overlap), step)) if w > size else [0]
    for y in ys:
        for x in xs:
            yield x, y, image[y : y + size, x : x + size]


def load_face_detector(
    spec: str, state_dir: Path | None, *, score_threshold: float = 0.3, threads: int = 1
) -> FaceDetector:
    """Open the configured face model (a manifest name or a path); FaceModelError when impossible."""
    try:
        path = models.resolve(spec, state_dir)
        card, sha = find_card(path)
    except (models.ModelError, CardError) as exc:
        raise FaceModelError(str(exc)) from None
    return FaceDetector(path, card, sha, score_threshold=score_threshold, threads=threads)
