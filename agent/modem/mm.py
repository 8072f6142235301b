"""Is someone else (usually ModemManager) using the modem's port? Checked lazily, before opening.

Two AT users on one port interleave their commands and answers, and ModemManager also resets and
reconfigures modems on its own, so the agent must not fight it. The robust and cheap checks are:
which processes hold the tty open (/proc/*/fd, readable as root), whether the ModemManager service
is active, and whether udev marks the port as ignored by it (ID_MM_PORT_IGNORE / ID_MM_DEVICE_IGNORE).
When ModemManager owns the port, `mmcli -J` still gives a read-only view of the link.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MM_NAME = "ModemManager"

HANDOVER_HINT = (
    "to let Vigil manage it, tell ModemManager to leave the port alone: add a udev rule such as "
    'ACTION=="add|change", SUBSYSTEM=="tty", KERNEL=="{kernel}", ENV{{ID_MM_PORT_IGNORE}}="1" '
    "(or ENV{{ID_MM_DEVICE_IGNORE}}=\"1\" for the whole modem) in /etc/udev/rules.d/77-vigil-modem.rules, "
    "run `udevadm control --reload && udevadm trigger`, or stop and disable ModemManager"
)


@dataclass
class PortUsers:
    """Who else uses a serial device. `readable` is False when /proc could not be inspected fully."""

    device: str
    holders: list[tuple[int, str]] = field(default_factory=list)  # (pid, process name)
    readable: bool = True
    mm_active: bool | None = None
    mm_ignores_port: bool | None = None

    @property
    def modemmanager_holds(self) -> bool:
        return any(name == MM_NAME for _, name in self.holders)

    @property
    def modemmanager_owns(self) -> bool:
        """MM holds the port, or is running with the port not ignored and we could not look."""
        if self.modemmanager_holds:
            return True
        return bool(self.mm_active) and self.mm_ignores_port is False and not self.readable

    @property
    def others(self) -> list[tuple[int, str]]:
        return [(pid, name) for pid, name in self.holders if name != MM_NAME]

    def explain(self) -> str:
        kernel = Path(os.path.realpath(self.device)).name
        if self.modemmanager_owns:
            return f"ModemManager is using {self.device}; " + HANDOVER_HINT.format(kernel=kernel)
        if self.others:
            who = ", ".join(f"{name} (pid {pid})" for pid, name in self.others)
            return f"{self.device} is already open in {who}"
        return ""


def is_device_path(port: str) -> bool:
    """Only real device files can be owned by another process (not vigilemu://, rfc2217://…)."""
    return "://" not in port


def port_users(device: str, *, proc: Path = Path("/proc"), probe_services: bool = True) -> PortUsers:
    real = os.path.realpath(device)
    users = PortUsers(device=device)
    own = os.getpid()
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        users.readable = False
        pids = []
    if pids and 1 not in pids and own != 1:
        # /proc hides other users' processes (hidepid, systemd's ProtectProc=invisible): whoever holds
        # the port may simply be invisible, as unreadable as a process we may not inspect
        users.readable = False
    for pid in pids:
        if pid == own:
            continue
        fd_dir = proc / str(pid) / "fd"
        try:
            targets = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except PermissionError:
            users.readable = False
            continue
        except OSError:  # the process ended meanwhile
            continue
        if real in targets:
            try:
                name = (proc / str(pid) / "comm").read_text().strip()
            except OSError:
                name = "?"
            users.holders.append((pid, name))
    if probe_services and not users.modemmanager_holds:
        users.mm_active = modemmanager_active()
        if users.mm_active:
            users.mm_ignores_port = udev_ignored(device)
    return users


def modemmanager_active() -> bool | None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        res = subprocess.run(
            [systemctl, "is-active", "--quiet", "ModemManager"], capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.returncode == 0


def udev_ignored(device: str) -> bool | None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return None
    try:
        res = subprocess.run(
            [udevadm, "info", "--query=property", f"--name={device}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    props = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return props.get("ID_MM_PORT_IGNORE") == "1" or props.get("ID_MM_DEVICE_IGNORE") == "1"


def mmcli_status(timeout: float = 10.0) -> dict[str, Any] | None:
    """Read-only link view from ModemManager (`mmcli -J -m any`), or None when unavailable."""
    mmcli = shutil.which("mmcli")
    if mmcli is None:
        return None
    try:
        res = subprocess.run(
            [mmcli, "-J", "-m", "any"], capture_output=True, text=True, timeout=timeout, check=False
        )
        data = json.loads(res.stdout) if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return summarise_mmcli(data) if isinstance(data, dict) else None


def summarise_mmcli(data: dict[str, Any]) -> dict[str, Any]:
    modem = data.get("modem") or {}
    generic = modem.get("generic") or {}
    g3 = modem.get("3gpp") or {}
    quality = (generic.get("signal-quality") or {}).get("value")
    techs = generic.get("access-technologies") or []
    return {
        "state": generic.get("state"),
        "manufacturer": generic.get("manufacturer"),
        "model": generic.get("model"),
        "firmware": generic.get("revision"),
        "registration": g3.get("registration-state"),
        "operator": g3.get("operator-name"),
        "technology": techs[0].upper() if techs else None,
        "signal_percent": int(str(quality)) if str(quality or "").isdigit() else None,
    }
