"""The shipped model manifest, and finding a model's card: beside the model file, else in the manifest.

Apart from agent.models (installing and fetching models) so the detector can find a card without
importing the downloader, and the downloader can use cards without importing the detector.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import agent
from agent.detect.card import CardError, ModelCard, card_path_for, model_sha256, parse_card


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    description: str
    license: str
    url: str | None = None
    mirror_path: str | None = None
    sha256: str | None = None
    size: int | None = None
    file: str | None = None  # shipped models: path below the models folder
    shipped: bool = False
    card: ModelCard | None = None

    @property
    def filename(self) -> str:
        for candidate in (self.file, self.mirror_path, self.url):
            if candidate:
                return Path(candidate.split("?")[0]).name
        return f"{self.name}.onnx"


def shipped_dirs() -> list[Path]:
    """Folders holding the shipped models and manifest, most specific first."""
    candidates = [
        Path(os.environ["VIGIL_SHIPPED_MODELS"]) if os.environ.get("VIGIL_SHIPPED_MODELS") else None,
        Path(agent.__file__).resolve().parents[1] / "models",
        Path(sys.prefix) / "share" / "vigil" / "models",
        Path("/usr/share/vigil/models"),
    ]
    return [p for p in candidates if p is not None and (p / "manifest.toml").is_file()]


@lru_cache(maxsize=4)
def _read_manifest(path: Path) -> tuple[ManifestEntry, ...]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = []
    for raw in data.get("model", []):
        raw = dict(raw)
        card = parse_card(raw.pop("card"), f"{path} [{raw.get('name')}]") if "card" in raw else None
        if card is not None and card.sha256 is None and raw.get("sha256"):
            card = card.model_copy(update={"sha256": raw["sha256"]})
        entries.append(ManifestEntry(card=card, **raw))
    return tuple(entries)


def manifest() -> tuple[ManifestEntry, ...]:
    dirs = shipped_dirs()
    if not dirs:
        return ()
    return _read_manifest(dirs[0] / "manifest.toml")


def manifest_card_for_sha(sha: str) -> ModelCard | None:
    for item in manifest():
        if item.card is not None and item.sha256 == sha:
            return item.card
    return None



def find_card(model_path: Path) -> tuple[ModelCard, str]:
    """The card for a model file and the file's sha256; CardError when there is none."""
    if not model_path.is_file():
        raise CardError(f"model file not found: {model_path}")
    sha = model_sha256(model_path)
    beside = card_path_for(model_path)
    if beside.is_file():
        try:
            data = json.loads(beside.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CardError(f"cannot read model card {beside}: {exc}") from None
        card = parse_card(data, str(beside))
        if card.sha256 and card.sha256 != sha:
            raise CardError(
                f"model card {beside} is for sha256 {card.sha256[:12]}…, but {model_path.name} has {sha[:12]}…; "
                "the model file was replaced or is corrupt"
            )
        return card, sha
    known = manifest_card_for_sha(sha)
    if known is not None:
        return known, sha
    raise CardError(
        f"no model card for {model_path}: write {beside.name} beside it (see docs/model-card.md) "
        "or use a model from `agent models list`"
    )
