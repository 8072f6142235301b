"""How the control plane and the status page reach issue 7's privacy machinery.

Every full frame that is shown or sent goes through the privacy stage's `Redactor.redact_frame`
(masks, faces, fallback) and snapshots are recorded in its audit log. When the privacy stage is not
running in this process (an agent built without it), a redactor is built here from the same config
with the same functions, so no image is ever shown or sent unredacted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.privacy import AuditLog, Redactor, open_audit

if TYPE_CHECKING:
    from agent.config.schema import Config
    from agent.privacy.stage import PrivacyStage
    from agent.services import Services

log = logging.getLogger(__name__)


class PrivacyAccess:
    """Resolves the redactor and the audit log when they are needed (stages may start in any order)."""

    def __init__(self, config: Callable[[], Config], services: Services, state_dir: Path, clock: Clock) -> None:
        self._config = config  # the agent's config now (it is replaced whole by live changes)
        self.services = services
        self.state_dir = state_dir
        self.clock = clock
        self._fallback: Redactor | None = None
        self._lock = threading.Lock()

    @property
    def stage(self) -> PrivacyStage | None:
        return self.services.privacy

    @property
    def redactor(self) -> Redactor:
        stage = self.stage
        if stage is not None:
            return stage.redactor
        with self._lock:
            if self._fallback is None:
                from agent.privacy.stage import build_redactor, load_faces

                config = self._config()
                self._fallback = build_redactor(config, load_faces(config, self.state_dir))
                log.warning("the privacy stage is not running; snapshots and the preview use a redactor of their own")
            return self._fallback

    @property
    def audit(self) -> AuditLog:
        return open_audit(self.state_dir, self._config().privacy.audit, self.clock)
