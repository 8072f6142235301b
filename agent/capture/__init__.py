"""Frame sources behind one interface, and the capture stage that runs them.

`open_source(spec)` understands: ``synthetic[:SEED]``, ``file:PATH`` or a plain path,
``webcam[:INDEX]`` or ``/dev/videoN``, ``rtsp://…`` (and http(s) streams), ``picamera2[:N]``.
"""

from __future__ import annotations

from pathlib import Path

from agent.capture.base import Frame, FrameSource, SourceError, SourceLost, SourceUnavailable, TruthBox
from agent.capture.opencv import LiveCaptureSource, VideoFileSource, webcam_available
from agent.capture.picamera import Picamera2Source
from agent.capture.stage import CaptureStage, FrameSlot
from agent.capture.synthetic import SceneOptions, SyntheticScene, SyntheticSource
from agent.config.schema import CaptureConfig

__all__ = [
    "CaptureStage",
    "Frame",
    "FrameSlot",
    "FrameSource",
    "LiveCaptureSource",
    "Picamera2Source",
    "SceneOptions",
    "SourceError",
    "SourceLost",
    "SourceUnavailable",
    "SyntheticScene",
    "SyntheticSource",
    "TruthBox",
    "VideoFileSource",
    "open_source",
    "webcam_available",
]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")


def _int_arg(spec: str, kind: str) -> int:
    value = spec.split(":", 1)[1]
    try:
        return int(value)
    except ValueError:
        raise SourceError(f"bad source {spec!r}: {kind} expects a number after ':'") from None


def open_source(spec: str, cfg: CaptureConfig | None = None) -> FrameSource:
    """Build (not open) the source named by `spec`."""
    cfg = cfg or CaptureConfig()
    spec = spec.strip()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed = _int_arg(spec, "synthetic") if ":" in spec else 0
        return SyntheticSource(seed=seed, fps=cfg.fps)
    if spec.startswith(STREAM_SCHEMES):
        return LiveCaptureSource(spec, width=cfg.width, height=cfg.height, fps=cfg.fps)
    if spec == "webcam" or spec.startswith("webcam:"):
        index = _int_arg(spec, "webcam") if ":" in spec else 0
        return LiveCaptureSource(index, width=cfg.width, height=cfg.height, fps=cfg.fps)
    if spec.startswith("/dev/video"):
        return LiveCaptureSource(spec, width=cfg.width, height=cfg.height, fps=cfg.fps)
    if spec == "picamera2" or spec.startswith("picamera2:"):
        index = _int_arg(spec, "picamera2") if ":" in spec else 0
        return Picamera2Source(
            index, lores=(cfg.width, cfg.height), main=(cfg.main_width, cfg.main_height), fps=cfg.fps
        )
    path = spec[5:] if spec.startswith("file:") else spec
    if spec.startswith("file:") or "/" in path or Path(path).suffix:
        return VideoFileSource(Path(path).expanduser(), loop=cfg.loop)
    raise SourceError(
        f"unknown source {spec!r}: use synthetic[:SEED], file:PATH, a video path, webcam[:INDEX], "
        "rtsp://..., or picamera2"
    )
