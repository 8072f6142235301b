"""The privacy stage: installs the mask filter and the redacting thumbnailer, and audits each start.

At every start the effective configuration and the models are compared with those of the previous
start (digests kept in <state_dir>/audit/last-start.json), so a configuration or model changed by
editing files on the node still shows up in the audit log as `config.change` / `model.change`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from agent.config.privacy import Mask, PrivacyConfig
from agent.config.schema import Config
from agent.fsutil import atomic_write
from agent.privacy import open_audit
from agent.privacy.audit import AuditLog
from agent.privacy.faces import FaceDetector, FaceModelError, load_face_detector
from agent.privacy.masks import MaskSet
from agent.privacy.redact import Redactor

log = logging.getLogger(__name__)

STATE_FILE = "last-start.json"
_MASKS = TypeAdapter(list[Mask])


def config_digests(config: Config) -> dict[str, str]:
    """One short digest per config key (lists count as one value), so changes can be named without
    writing values (passwords, polygons) into the audit log."""
    flat: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key))
            return
        raw = json.dumps(value, sort_keys=True, default=str).encode()
        flat[path] = hashlib.sha256(raw).hexdigest()[:16]

    walk(config.model_dump(mode="json"), "")
    return flat


class PrivacyStage:
    name = "privacy"

    def __init__(
        self,
        config: Config,
        redactor: Redactor,
        audit: AuditLog,
        *,
        model: dict[str, str] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.redactor = redactor
        self.audit = audit
        self.model = model or {}
        self.state_dir = state_dir

    def start(self) -> None:
        faces = self.redactor.faces.info() if self.redactor.faces is not None else None
        new = config_digests(self.config)
        current = {"config": new, "model": self.model, "face_model": faces}
        previous = self._load_state()
        if previous is not None:
            old: dict[str, str] = previous.get("config", {})
            changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
            if changed:
                details: dict[str, Any] = {"keys": changed}
                # settings that exist in only one of the two versions (an agent upgrade) are listed apart
                if added := sorted(set(new) - set(old)):
                    details["new_settings"] = added
                if gone := sorted(set(old) - set(new)):
                    details["removed_settings"] = gone
                self.audit.record("config.change", "startup (config file, environment or flags)", details)
            for key in ("model", "face_model"):
                if previous.get(key) != current[key]:
                    change = {"which": key, "from": previous.get(key), "to": current[key]}
                    self.audit.record("model.change", "startup", change)
        details = {
            "model": self.model,
            "faces": self.redactor.face_mode,
            "face_model": faces,
            "masks": self.redactor.masks.names,
        }
        self.audit.record("agent.start", "startup", details)
        self._save_state(current)

    def stop(self, deadline: float | None = None) -> None:
        pass  # no thread: masks apply on the analysis thread

    def set_masks(self, masks: Sequence[Mask] | Sequence[Mapping[str, Any]], *, actor: str) -> MaskSet:
        """Validate and swap the privacy masks live (the control plane's config/set); audited.

        Raises pydantic's ValidationError (nothing changes) when a mask is invalid.
        """
        validated = _MASKS.validate_python(
            [m.model_dump() if isinstance(m, Mask) else dict(m) for m in masks]
        )
        before = self.redactor.masks.names
        current = self.redactor.set_masks(validated)
        self.audit.record("masks.update", actor, {"before": before, "after": current.names})
        return current

    def reconfigure(self, cfg: PrivacyConfig, *, actor: str) -> None:
        """Live change of the privacy section: only the masks change while running (audited)."""
        self.set_masks(cfg.masks, actor=actor)

    def status(self) -> dict[str, Any]:
        return {"privacy": self.redactor.status()}

    # -- state of the previous start --------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.audit.folder / STATE_FILE

    def _load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self._state_path(), json.dumps(state, sort_keys=True).encode(), mode=0o640)


def load_faces(config: Config, state_dir: Path | None) -> FaceDetector | None:
    """The configured face detector, or None (logged: the fallback applies) when it is unusable."""
    faces = config.privacy.faces
    if not faces.redact:
        log.warning("face redaction is off (privacy.faces.redact = false): thumbnails may show faces")
        return None
    try:
        return load_face_detector(faces.model, state_dir, score_threshold=faces.score_threshold)
    except FaceModelError as exc:
        log.warning(
            "face redaction model unavailable (%s); applying the %s fallback to every image",
            exc,
            faces.fallback,
        )
        return None


def build_redactor(config: Config, faces: FaceDetector | None) -> Redactor:
    ev = config.events
    return Redactor(
        MaskSet(config.privacy.masks),
        faces,
        config.privacy.faces,
        max_side=ev.thumb_max_side,
        quality=ev.thumb_quality,
        margin=ev.thumb_margin,
    )


def build(agent: Any, running: Any) -> PrivacyStage:
    """Stage builder (agent.app.STAGE_BUILDERS); always built, since masks and redaction must apply."""
    config: Config = agent.config
    redactor = build_redactor(config, load_faces(config, running.state_dir))
    running.pipeline.filters.insert(0, redactor.filter)  # masks before anything else sees the frame
    running.pipeline.detection_filters.append(redactor.drop_masked)
    running.pipeline.thumbnailer = redactor
    audit = open_audit(running.state_dir, config.privacy.audit, running.clock)
    return PrivacyStage(config, redactor, audit, model=running.detector.info(), state_dir=running.state_dir)
