"""Detector backends behind one small interface; today one backend, onnxruntime on the CPU."""

from __future__ import annotations

import abc
import logging
import platform
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config.schema import ROAD_USERS, DetectConfig
from agent.detect.card import CardError, ModelCard, ModelInfo
from agent.detect.decoders import DECODERS, nms
from agent.detect.manifest import find_card
from agent.detect.preprocess import InputWriter, Letterbox

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

    def reconfigure(self, cfg: DetectConfig) -> None:  # noqa: B027 - backends without thresholds ignore it
        """Take the live-tunable detection settings (thresholds, classes) from a new config."""

    @property
    def name(self) -> str:
        return self.card.name

    def info(self) -> ModelInfo:
        return {"name": self.card.name, "sha256": self.sha256}


ARM = {"aarch64", "arm64", "armv7l"}


def class_problem(classes: list[str], card: ModelCard) -> str | None:
    """Why these `detect.classes` look wrong for this model, or None. Labels the model lacks are
    expected in the default list (road users in several label sets' spellings); in a list of one's own
    they are a typo or the wrong model, and a list the model knows nothing of means a node gone dark."""
    unknown = sorted(set(classes) - set(card.labels))
    known = ", ".join(card.labels)
    if not unknown:
        return None
    if len(unknown) == len(set(classes)):
        return f"detect.classes: model {card.name} has none of them: NOTHING would be detected (it knows {known})"
    if tuple(classes) == ROAD_USERS:
        return None
    return f"detect.classes: model {card.name} has no class {', '.join(map(repr, unknown))} (it knows {known})"


def session_options(threads: int, *, spinning: bool = False, xnnpack: bool = False) -> Any:
    """onnxruntime options for a small ARM/x86 board running one model next to capture and uplink.

    Full graph optimisation (it includes the NCHWc layout rewrite: about 2× faster than the basic
    level for YOLOX-Nano on x86, bench/pipeline.py). Worker threads do not spin between operators
    unless asked: spinning bought up to ~20 % more frames/s on idle cores but cost ~25 % more CPU per
    frame, and nothing when the capture thread was decoding (bench/README.md). With XNNPACK the
    provider brings its own thread pool, so onnxruntime's own pool stays at one thread, as the
    XNNPACK provider's documentation recommends.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1 if xnnpack else threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    opts.log_severity_level = 3  # warnings from old exports (initializers as inputs) are noise here
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning and not xnnpack else "0")
    return opts


def providers(
    threads: int, *, available: list[str] | None = None, machine: str | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """Execution providers in order of preference: XNNPACK on ARM when this build has it, then the CPU.

    XNNPACK's NEON kernels are what make float convolutions fast on a Pi; builds without it (the
    PyPI wheels today) fall back to the default CPU provider, which is also what runs any operator
    XNNPACK does not take.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    arch = (machine or platform.machine()).lower()
    chosen: list[str | tuple[str, dict[str, str]]] = []
    if "XnnpackExecutionProvider" in available and arch in ARM:
        chosen.append(("XnnpackExecutionProvider", {"intra_op_num_threads": str(threads)}))
    chosen.append("CPUExecutionProvider")
    return chosen


def open_session(model: Path | bytes, threads: int, *, spinning: bool = False) -> Any:
    import onnxruntime as ort

    chosen = providers(threads)
    xnnpack = any(isinstance(p, tuple) and p[0] == "XnnpackExecutionProvider" for p in chosen)
    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            sess_options=session_options(threads, spinning=spinning, xnnpack=xnnpack),
            providers=chosen,
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
        session: Any = None,
        score_threshold: float = 0.4,
        nms_iou: float = 0.45,
        classes: list[str] | None = None,
        min_box_area: float = 0.0,
        threads: int = 2,
        spinning: bool = False,
    ) -> None:
        self.path = path
        self.card = card
        self.sha256 = sha256
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.min_box_area = min_box_area
        self._session = session if session is not None else open_session(path, threads, spinning=spinning)
        inputs = self._session.get_inputs()
        self._input_name = card.input.name or inputs[0].name
        if self._input_name not in {i.name for i in inputs}:
            raise CardError(f"model {path.name} has no input named {self._input_name!r} (card says so)")
        self._decode = DECODERS[card.output.decoder]
        self._writer = InputWriter(card.input)
        self._tensor = self._writer.tensor
        self.set_classes(classes)
        self.inference_ms: deque[float] = deque(maxlen=256)
        self.frames = 0

    def reconfigure(self, cfg: DetectConfig) -> None:
        self.score_threshold = cfg.score_threshold
        self.nms_iou = cfg.nms_iou
        self.min_box_area = cfg.min_box_area
        self.set_classes(cfg.classes)

    def set_classes(self, classes: list[str] | None) -> None:
        """Restrict output to these labels (None or empty: all). Labels the model lacks are kept in
        `unknown_classes`; when they look like a mistake, `classes_problem` says so (status page) and a
        warning is logged: the node keeps running, reporting the classes it can, rather than going dark."""
        self.unknown_classes = sorted(set(classes or ()) - set(self.card.labels))
        self.classes_problem = class_problem(classes, self.card) if classes else None
        if not classes:
            self._allowed = None
            return
        if self.classes_problem:
            log.warning("%s", self.classes_problem)
        self._allowed = np.array([label in classes for label in self.card.labels], bool)

    def prepare(self, image: np.ndarray) -> Letterbox:
        """Write `image` into the input tensor; returns how it was placed (to map boxes back)."""
        return self._writer(image)

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
            x1, y1, x2, y2 = (float(v) for v in box)
            result.append(Detection(label, float(score), (x1, y1, x2, y2), int(cls)))
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
    spinning: bool = False,
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
        spinning=spinning,
    )


def detector_from_config(path: Path, cfg: DetectConfig) -> OnnxDetector:
    """Open a model with the detection settings of the config (start-up and model updates alike)."""
    return load_detector(
        path,
        score_threshold=cfg.score_threshold,
        nms_iou=cfg.nms_iou,
        classes=cfg.classes,
        min_box_area=cfg.min_box_area,
        threads=cfg.threads,
        spinning=cfg.spin,
    )
