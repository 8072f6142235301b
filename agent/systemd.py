"""sd_notify without libsystemd: READY, STATUS and watchdog pings over $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Talks to systemd when run as a Type=notify service; a no-op everywhere else."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self._address = ("\0" + address[1:]) if address and address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        enabled = usec is not None and (pid is None or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 1e6 / 2 if enabled and usec else None
        self._last_ping = 0.0

    @property
    def active(self) -> bool:
        return bool(self._address)

    def send(self, message: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        """What `systemctl status` shows under the unit (e.g. that the agent waits for its camera)."""
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def ping(self) -> None:
        """Watchdog keep-alive; rate-limited to half the configured WatchdogSec.

        It means "the agent's own machinery turns" (the analysis loop calls it, and only while the
        capture thread lives), not "the camera delivers": restarting the agent brings no camera back,
        and an agent without its camera still runs the uplink, modem, status page and telemetry that
        report it. The camera's absence is reported (camera_lost, STATUS=), never escalated to a restart."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
