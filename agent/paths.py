"""Where the agent keeps its state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config.schema import Config


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY for the service, else the per-user data dir ($XDG_DATA_HOME/vigil)."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vigil"


def state_dir_for(config: Config) -> Path:
    """The node's state directory: `node.state_dir` when set, else the default above."""
    return (config.node.state_dir or default_state_dir()).expanduser()
