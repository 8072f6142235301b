"""Model cards: everything needed to feed a model and read its output, kept beside the .onnx.

A card is `<model>.card.json` next to `<model>.onnx`. Models listed in the manifest
(models/manifest.toml) carry their card there, found by the file's sha256, so a pristine
upstream file such as yolox_nano.onnx needs no file written beside it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.fetch import sha256_file


class ModelInfo(TypedDict, total=False):
    """A model's identity as events, replies and the audit log carry it (Detector.info()); the
    `model` object of schema/event-v1.json."""

    name: str
    sha256: str

class CardError(Exception):
    """The model or its card cannot be used; the message says which and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    name: str | None = Field(default=None, description="Graph input name (default: the first input).")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["BGR", "RGB"] = "BGR"
    scale: float = Field(default=1.0, description="Multiply pixel values (0..255) by this first.")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    letterbox: Literal["top-left", "centre"] = "top-left"
    pad_value: int = Field(default=114, ge=0, le=255)


class OutputSpec(_Strict):
    decoder: Literal["yolox", "yolov5", "yolov8", "centerface"]
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32], description="yolox grid strides.")
    boxes: Literal["grid", "pixels"] = Field(
        default="grid",
        description="yolox only: raw grid terms (decode_in_inference=False) or decoded pixels.",
    )
    nms: Literal["per-class", "agnostic"] = "per-class"


class ModelCard(_Strict):
    name: str
    version: str = "1"
    task: Literal["detect", "face"] = "detect"
    description: str = ""
    license: str = ""
    input: InputSpec
    output: OutputSpec
    labels: list[str] = Field(min_length=1)
    sha256: str | None = None

    @model_validator(mode="after")
    def _channels(self) -> ModelCard:
        if len(self.input.mean) != 3 or len(self.input.std) != 3:
            raise ValueError("input.mean and input.std need three values")
        if any(s == 0 for s in self.input.std):
            raise ValueError("input.std must not contain 0")
        return self


def card_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".card.json")


def parse_card(data: dict, origin: str) -> ModelCard:
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CardError(f"model card {origin} is invalid: {problems}") from None


@lru_cache(maxsize=16)
def _cached_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def model_sha256(path: Path) -> str:
    st = path.stat()
    return _cached_sha(str(path), st.st_size, st.st_mtime_ns)
