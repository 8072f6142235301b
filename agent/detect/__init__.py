"""Object detection: model cards, decoders and the onnxruntime backend."""

from agent.detect.card import CardError, ModelCard, model_sha256
from agent.detect.detector import Detection, Detector, OnnxDetector, load_detector
from agent.detect.manifest import find_card

__all__ = [
    "CardError",
    "Detection",
    "Detector",
    "ModelCard",
    "OnnxDetector",
    "find_card",
    "load_detector",
    "model_sha256",
]
