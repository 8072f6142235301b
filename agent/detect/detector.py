"""Detector backends behind one small interface; today one backend, onnxruntime on the CPU."""

from __future__ import annotations

import abc
import logging
import platform
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.detect.card import CardError, ModelCard, find_card
from agent.detect.decoders import DECODERS, nms
from agent.detect.preprocess import letterbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # frame pixels, x1 y1 x2 y2
    class_id: int


class Detector(abc.ABC):
    """What the pipeline needs from any detector backend."""

    card: ModelCard
    sha256: str
    path: Path

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> list[Detection]:
        """Detections in `image` (BGR uint8) in its own pixel coordinates."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release the runtime session."""

    @property
    def name(self) -> str:
        return self.card.name

    def info(self) -> dict[str, str]:
        return {"name": self.card.name, "sha256": self.sha256}


def session_options(threads: int):
    """onnxruntime options chosen for a small ARM/x86 board running one model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    opts.log_severity_level = 3  # warnings from old exports (initializers as inputs) are noise here
    # Worker threads spin after a run by default; on a shared 4-core Pi that steals CPU from capture.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = []
    if "XnnpackExecutionProvider" in available and platform.machine().lower() in {
        "aarch64",
        "arm64",
        "armv7l",
    }:
        chosen.append("XnnpackExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


def open_session(model: Path | bytes, threads: int):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            sess_options=session_options(threads),
            providers=providers(),
        )
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt/unsupported files
        name = "model bytes" if isinstance(model, bytes) else str(model)
        raise CardError(f"cannot load model {name}: {str(exc).strip().splitlines()[0][:300]}") from None


class OnnxDetector(Detector):
    """onnxruntime detector driven entirely by the model card."""

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        sha256: str,
        *,
        session=None,
        score_threshold: float = 0.4,
        nms_iou: float = 0.45,
        classes: list[str] | None = None,
        min_box_area: float = 0.0,
        threads: int = 2,
    ) -> None:
        self.path = path
        self.card = card
        self.sha256 = sha256
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.min_box_area = min_box_area
        self._session = session if session is not None else open_session(path, threads)
        inputs = self._session.get_inputs()
        self._input_name = card.input.name or inputs[0].name
        if self._input_name not in {i.name for i in inputs}:
            raise CardError(f"model {path.name} has no input named {self._input_name!r} (card says so)")
        self._decode = DECODERS[card.output.decoder]
        spec = card.input
        shape = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
        self._tensor = np.zeros(shape, np.float32)
        self._canvas = np.empty((spec.height, spec.width, 3), np.uint8)
        self._normalise = spec.scale != 1.0 or any(spec.mean) or any(s != 1.0 for s in spec.std)
        self._mean = np.array(spec.mean, np.float32).reshape(self._channel_shape())
        self._std = np.array(spec.std, np.float32).reshape(self._channel_shape())
        self.set_classes(classes)
        self.inference_ms: deque[float] = deque(maxlen=256)
        self.frames = 0

    def _channel_shape(self) -> tuple[int, ...]:
        return (1, 3, 1, 1) if self.card.input.layout == "NCHW" else (1, 1, 1, 3)

    def set_classes(self, classes: list[str] | None) -> None:
        """Restrict output to these labels (None or empty: all); unknown labels are ignored with a warning."""
        if not classes:
            self._allowed = None
            return
        known = set(self.card.labels)
        unknown = sorted(set(classes) - known)
        if unknown and len(unknown) < len(set(classes)):
            log.debug("model %s has no labels %s; ignoring them", self.card.name, ", ".join(unknown))
        self._allowed = np.array([label in classes for label in self.card.labels], bool)

    def prepare(self, image: np.ndarray):
        spec = self.card.input
        canvas, placement = letterbox(
            image,
            spec.width,
            spec.height,
            centre=spec.letterbox == "centre",
            pad_value=spec.pad_value,
            out=self._canvas,
        )
        pixels = canvas[..., ::-1] if spec.color == "RGB" else canvas
        if spec.layout == "NCHW":
            np.copyto(self._tensor[0], pixels.transpose(2, 0, 1), casting="unsafe")
        else:
            np.copyto(self._tensor[0], pixels, casting="unsafe")
        if self._normalise:
            self._tensor *= spec.scale
            self._tensor -= self._mean
            self._tensor /= self._std
        return placement

    def run(self) -> list[np.ndarray]:
        return self._session.run(None, {self._input_name: self._tensor})

    def detect(self, image: np.ndarray) -> list[Detection]:
        placement = self.prepare(image)
        started = time.perf_counter()
        outputs = self.run()
        self.inference_ms.append((time.perf_counter() - started) * 1000.0)
        self.frames += 1
        boxes, scores, classes = self._decode(outputs, self.card, self.score_threshold)
        if len(boxes) == 0:
            return []
        if self._allowed is not None:
            mask = self._allowed[np.clip(classes, 0, len(self._allowed) - 1)]
            boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
        keep = nms(boxes, scores, self.nms_iou, None if self.card.output.nms == "agnostic" else classes)
        boxes = placement.to_frame(boxes[keep])
        h, w = image.shape[:2]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        min_area = self.min_box_area * w * h
        result = []
        for box, score, cls in zip(boxes, scores[keep], classes[keep], strict=True):
            if (box[2] - box[0]) * (box[3] - box[1]) < max(min_area, 1.0):
                continue
            label = self.card.labels[cls] if cls < len(self.card.labels) else f"class{cls}"
            result.append(Detection(label, float(score), tuple(float(v) for v in box), int(cls)))
        return result

    def close(self) -> None:
        self._session = None


def load_detector(
    path: Path | str,
    *,
    score_threshold: float = 0.4,
    nms_iou: float = 0.45,
    classes: list[str] | None = None,
    min_box_area: float = 0.0,
    threads: int = 2,
) -> OnnxDetector:
    """Open a model file with its card; raises CardError with a user-facing message."""
    model_path = Path(path)
    card, sha = find_card(model_path)
    if card.task != "detect":
        raise CardError(f"{model_path.name} is a {card.task} model, not an object detector")
    return OnnxDetector(
        model_path,
        card,
        sha,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        classes=classes,
        min_box_area=min_box_area,
        threads=threads,
    )
