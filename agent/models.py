"""The model manifest, where installed models live, and verified downloads.

Shipped models sit in the repository's models/ folder (or {prefix}/share/vigil/models after a
wheel install); fetched ones under <state_dir>/models/NAME/. Every download is checked against
the manifest's sha256 before it can be used, and resumes after a cut link.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

from agent import fetch as fetch_file
from agent.detect.card import ModelCard, card_path_for
from agent.detect.manifest import ManifestEntry as ManifestEntry  # re-exported
from agent.detect.manifest import manifest, shipped_dirs
from agent.fetch import sha256_file
from agent.fsutil import atomic_write

MIRROR_ENV = "VIGIL_MODELS_MIRROR"


class ModelError(Exception):
    """A model cannot be found, fetched or verified; the message tells the user what to do."""


def entry(name: str) -> ManifestEntry:
    for item in manifest():
        if item.name == name:
            return item
    known = ", ".join(e.name for e in manifest()) or "none"
    raise ModelError(f"unknown model {name!r} (known: {known}; see `agent models list`)")


def installed_path(name: str, state_dir: Path | None) -> Path | None:
    """Where model `name` is installed (fetched copy first, then the shipped one), or None."""
    item = entry(name)
    if state_dir is not None:
        fetched = state_dir / "models" / name / item.filename
        if fetched.is_file():
            return fetched
    if item.shipped and item.file:
        for folder in shipped_dirs():
            if (folder / item.file).is_file():
                return folder / item.file
    return None


def looks_like_path(spec: str) -> bool:
    return spec.endswith(".onnx") or os.sep in spec or spec.startswith(".")


def resolve(spec: str, state_dir: Path | None) -> Path:
    """A model spec from config/CLI (a path or a manifest name) to an existing .onnx path."""
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return path
    installed = installed_path(spec, state_dir)
    if installed is None:
        raise ModelError(
            f"model {spec!r} is not installed; run `agent models fetch {spec}` (needs the network or --mirror)"
        )
    item = entry(spec)
    if item.sha256 and not _digest_matches(installed, item.sha256):
        raise ModelError(
            f"{installed} is not the {spec} model the manifest names (sha256 differs): a damaged file; "
            "reinstall the agent or fetch the model again"
        )
    return installed


def _digest_matches(path: Path, sha256: str) -> bool:
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns) == sha256


@lru_cache(maxsize=16)
def _file_digest(path: str, _size: int, _mtime_ns: int) -> str:
    """sha256 of a model file, remembered while its size and mtime stay the same (checked once per run)."""
    return sha256_file(Path(path))


def _source_url(item: ManifestEntry, mirror: str | None) -> str:
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        return mirror.rstrip("/") + "/" + (item.mirror_path or item.filename)
    if not item.url:
        raise ModelError(f"model {item.name!r} has no download URL")
    return item.url


Progress = Callable[[int, int | None], None]


MAX_MODEL_BYTES = 512 * 1024 * 1024  # far above any model a Pi runs; protects the state partition


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    progress: Progress | None = None,
    timeout: float = 30.0,
    max_bytes: int = MAX_MODEL_BYTES,
) -> Path:
    """Download a model file to `dest`, resuming a partial download, verified against `sha256`
    (agent.fetch.download: a cut link or a wrong file never replaces a working model)."""
    policy = fetch_file.FetchPolicy(max_bytes=max_bytes, schemes=(*fetch_file.SCHEMES, "file"))  # --mirror DIR
    try:
        return fetch_file.download(url, dest, sha256, policy, progress=progress, timeout=timeout)
    except fetch_file.FetchError as exc:
        hint = f" (offline? use --mirror URL or {MIRROR_ENV})" if exc.resumable else ""
        raise ModelError(f"{exc.detail}{hint}") from None


def fetch(name: str, state_dir: Path, *, mirror: str | None = None, progress: Progress | None = None) -> Path:
    """Install manifest model `name` under state_dir/models/NAME, with its card beside it."""
    item = entry(name)
    if item.shipped:
        path = installed_path(name, None)
        if path is None:
            raise ModelError(
                f"{name} ships with Vigil but its file is missing; reinstall or run models/build_default.py"
            )
        return path
    if not item.sha256:
        raise ModelError(f"manifest entry {name!r} has no sha256; refusing an unverifiable download")
    dest = state_dir / "models" / name / item.filename
    if dest.is_file() and sha256_file(dest) == item.sha256:
        return dest
    download(_source_url(item, mirror), dest, item.sha256, progress=progress)
    if item.card is not None:
        write_card(card_path_for(dest), item.card)
    return dest


def write_card(path: Path, card: ModelCard) -> None:
    atomic_write(
        path,
        (json.dumps(card.model_dump(mode="json", exclude_none=True), indent=2) + "\n").encode(),
        mode=0o644,
    )


def describe(state_dir: Path | None) -> list[dict[str, Any]]:
    rows = []
    for item in manifest():
        path = installed_path(item.name, state_dir)
        rows.append(
            {
                "name": item.name,
                "shipped": item.shipped,
                "installed": str(path) if path else None,
                "license": item.license,
                "size": item.size,
                "sha256": item.sha256,
                "description": item.description,
            }
        )
    return rows


def text_progress(stream: TextIO = sys.stderr) -> Progress:
    """A one-line progress bar for terminals (and a quiet one for pipes)."""
    last = [-1]

    def show(done: int, total: int | None) -> None:
        if total:
            pct = int(done * 100 / total)
            if pct == last[0]:
                return
            last[0] = pct
            bar = "#" * (pct // 4)
            stream.write(f"\r[{bar:<25}] {pct:3d}% {done / 1e6:6.2f}/{total / 1e6:.2f} MB")
            if done >= total:
                stream.write("\n")
        else:
            stream.write(f"\r{done / 1e6:6.2f} MB")
        stream.flush()

    return show


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
