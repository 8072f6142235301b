"""Privacy by design: masks, face redaction, the audit log, retention and the privacy report.

Integration points for other stages (the control plane, the status page):
- `Redactor.redact_frame(image, objects)`: the one way a full frame may leave the node (snapshot) or
  be shown (preview); reach it as `running.services.privacy.redactor`.
- `AuditLog.record(action, actor, details)`: the node's append-only audit log; `open_audit()` gives
  the shared instance for a state directory.
- `PrivacyStage.set_masks(masks, actor=...)`: live mask changes, validated and audited.
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent.clock import Clock
from agent.config.privacy import AuditConfig
from agent.privacy.audit import AuditLog
from agent.privacy.faces import FaceDetector, FaceModelError, load_face_detector
from agent.privacy.masks import MaskSet
from agent.privacy.redact import Redacted, Redactor

__all__ = [
    "AuditLog",
    "FaceDetector",
    "FaceModelError",
    "MaskSet",
    "Redacted",
    "Redactor",
    "load_face_detector",
    "open_audit",
]

_open_lock = threading.Lock()


def open_audit(state_dir: Path, cfg: AuditConfig | None = None, clock: Clock | None = None) -> AuditLog:
    """The audit log of a state directory (<state_dir>/audit), shared by every stage of the process,
    keyed with the provisioned node secret (or one of the node's own, created on first use)."""
    from agent.privacy.auditkey import load_or_create

    cfg = cfg or AuditConfig()
    folder = (state_dir / "audit").expanduser().resolve()
    with _open_lock:  # one key per folder, even when stages open it at the same moment
        existing = AuditLog.existing(folder)
        if existing is not None:
            return existing
        folder.mkdir(parents=True, exist_ok=True)
        key = load_or_create(cfg.key_file, folder)
        return AuditLog.open(folder, max_bytes=cfg.max_kb * 1024, keep=cfg.keep, clock=clock, key=key)
