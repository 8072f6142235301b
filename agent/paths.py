"""Where the agent keeps its state."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY for the service, else the per-user data dir ($XDG_DATA_HOME/vigil)."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vigil"
