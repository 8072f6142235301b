"""Settings that expose a node on its network: warnings in development, refused in production.

Plain `mqtt://` carries the MQTT password in clear text and lets anyone on the path inject
commands (the control plane subscribes to `cmd/#`) or read the replies. A broker on this very
machine is exempt: nothing crosses a network (e.g. a local Mosquitto bridging to the fleet over
TLS). Unsigned commands that may change the node are the same kind of exposure.
`node.profile = "production"` (written by vigil-provision) turns each finding into a config
error; otherwise the agent logs them at start and `agent check-config` prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from agent.config.control import ControlConfig, is_loopback


class _Uplink(Protocol):
    @property
    def broker(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...


class Exposable(Protocol):
    """What `exposures` reads of a config (agent.config.schema.Config, which validates with it)."""

    @property
    def control(self) -> ControlConfig: ...
    @property
    def uplink(self) -> _Uplink: ...


def _plain_remote_broker(url: str) -> bool:
    if not url.startswith("mqtt://"):
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return True
    return not is_loopback(host)


def exposures(config: Exposable) -> list[str]:
    """One sentence per exposing setting, naming the fields and what to do; empty when none."""
    found = []
    control = config.control
    if control.enabled and control.unsigned_role in ("operator", "admin"):
        found.append(
            f"control.unsigned_role = {control.unsigned_role!r}: commands nobody signed may change this node; "
            "anyone who can publish on its cmd/ topics (a broker ACL is the only guard) can reconfigure it "
            "(use signed commands: vigil-fleet cmd)"
        )
    uplink = config.uplink
    if not _plain_remote_broker(uplink.broker):
        return found
    if uplink.username or uplink.password or uplink.password_file:
        found.append(
            "uplink.broker is plain mqtt:// and uplink.username/password is set: the password crosses "
            "the network unencrypted (use mqtts://)"
        )
    if config.control.enabled:
        found.append(
            "uplink.broker is plain mqtt:// with control.enabled = true: anyone on the path can send "
            "this node commands and read its replies (use mqtts:// or set control.enabled = false)"
        )
    return found
