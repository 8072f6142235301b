"""Config of over-the-air agent updates (`[update]`): where releases live, the key they must be signed
with, and the probation a new release must pass before it is kept."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.config.base import Section


class UpdateConfig(Section):
    enabled: bool = Field(
        default=True, description="Accept `agent/update` commands (signed releases from the fleet's operator)."
    )
    releases_dir: Path = Field(
        default=Path("/opt/vigil/releases"),
        description="Release slots (one folder per version, `current` pointing at the running one) and "
        "their state. The service's launcher uses the same folder.",
    )
    public_key: Path = Field(
        default=Path("/etc/vigil/release-key.pub"),
        description="The fleet's Ed25519 release key (from the node bundle): only releases it signed are "
        "installed.",
    )
    python: Path | None = Field(
        default=None,
        description="Interpreter the venv of a new release is made with. Default: the one the agent runs on "
        "(the system python3 on a node).",
    )
    max_bytes: int = Field(
        default=400 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest release file accepted (an arm64 release with its wheelhouse is about 100 MB).",
    )
    download_attempts: int = Field(
        default=5, ge=1, le=100, description="Tries (each resuming the last) before a download is given up."
    )
    download_timeout_s: float = Field(
        default=60.0, gt=0, description="A download that receives nothing for this long is retried."
    )
    probation_timeout_s: float = Field(
        default=600.0,
        ge=5,
        description="A new release must connect to the broker and analyse `probation_frames` frames within "
        "this long after it starts, or the next start rolls back to the previous release.",
    )
    probation_frames: int = Field(
        default=30, ge=1, le=100000, description="Frames a new release must analyse to pass its probation."
    )
    probation_starts: int = Field(
        default=2,
        ge=1,
        le=20,
        description="Starts a new release gets to confirm itself: it is rolled back when it stopped this "
        "often before confirming (a crash at start, a power cut during probation).",
    )
