"""The modem's AT port: whether another program (ModemManager) holds it, opening it, the AT engine
running on it, and the unsolicited lines it delivers between polls."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent.config.modem import ModemConfig
from agent.modem.at import AtEngine, SerialLike, open_port
from agent.modem.mm import PortUsers, is_device_path, mmcli_status, port_users
from agent.urls import hide_userinfo, scrub_userinfo

log = logging.getLogger(__name__)

URC_QUEUE = 256  # unsolicited lines kept between two passes of the supervisor; the oldest go first


@dataclass(frozen=True)
class Refusal:
    """Why the port is not open: it cannot be opened (`absent`) or ModemManager owns it."""

    port: Literal["absent", "modemmanager"]
    message: str
    view: dict[str, Any] | None = None  # ModemManager's own read-only view of the link


class ModemPort:
    """Opens the port (unless ModemManager owns it) and owns the AT engine on it."""

    def __init__(
        self,
        config: ModemConfig,
        *,
        name: str = "modem",
        opener: Callable[[], SerialLike] | None = None,
        users_probe: Callable[[str], PortUsers] | None = port_users,
        mm_probe: Callable[[], dict[str, Any] | None] | None = mmcli_status,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.name = name
        self.label = hide_userinfo(config.port)  # what logs and status show (rfc2217://user:pw@…)
        self._opener = opener or (lambda: open_port(config.port, config.baudrate))
        self._users_probe = users_probe
        self._mm_probe = mm_probe
        self._wake = wake
        self.engine: AtEngine | None = None
        self.opens = 0
        self.urcs_dropped = 0
        self._urcs: deque[str] = deque(maxlen=URC_QUEUE)
        self._mm_warned = False
        self._others_warned = False

    def open(self) -> Refusal | None:
        """Open the port and start an engine on it; the refusal when that cannot be done now."""
        cfg = self.config
        if self._users_probe is not None and is_device_path(cfg.port):
            users = self._users_probe(cfg.port)
            if users.modemmanager_owns:
                return self._modemmanager(users)
            if users.others and not self._others_warned:
                self._others_warned = True
                log.warning("%s; AT commands may interleave with theirs", users.explain())
        try:
            serial_port = self._opener()
        except Exception as exc:  # SerialException/OSError (no such device), ValueError (bad URL)
            reason = str(exc) if cfg.port in str(exc) else f"cannot open {cfg.port}: {exc}"
            return Refusal("absent", scrub_userinfo(reason.replace(cfg.port, self.label)))  # URLs may hold passwords
        self._urcs.clear()  # lines of the previous session describe a modem that has since gone
        engine = AtEngine(
            serial_port, name=self.name, default_timeout_s=cfg.command_timeout_s, on_closed=self._on_closed
        )
        engine.add_urc_listener(self._on_urc)
        engine.start()
        self.engine = engine
        self.opens += 1
        log.info("modem port %s open", self.label)
        return None

    @property
    def lost(self) -> str | None:
        """Why an engine that was running closed (unplugged, re-enumerated), else None."""
        engine = self.engine
        if engine is None or not engine.closed:
            return None
        return engine.closed_reason or "closed"

    def drop(self) -> None:
        """Stop the engine (which closes the port); the next `open` starts afresh."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.stop()

    def take_urcs(self) -> list[str]:
        lines: list[str] = []
        while self._urcs:
            lines.append(self._urcs.popleft())
        return lines

    def counters(self) -> dict[str, int]:
        engine = self.engine
        stats = engine.protocol.stats.as_dict() if engine is not None else {}
        return {
            **stats,
            "commands": engine.commands if engine is not None else 0,
            "urcs_dropped": self.urcs_dropped,
            "opens": self.opens,
        }

    def _modemmanager(self, users: PortUsers) -> Refusal:
        message = users.explain()
        if not self._mm_warned:
            self._mm_warned = True
            log.warning("%s; until then the agent only reports what ModemManager sees (read-only)", message)
        return Refusal("modemmanager", message, self._mm_probe() if self._mm_probe is not None else None)

    def _on_urc(self, line: str) -> None:
        """Runs on the AT reader thread: queue and wake, nothing else (bounded; oldest dropped)."""
        if len(self._urcs) == self._urcs.maxlen:
            self.urcs_dropped += 1
        self._urcs.append(line)
        self._wake()

    def _on_closed(self, reason: str) -> None:
        log.warning("modem port %s lost: %s", self.label, scrub_userinfo(reason))
        self._wake()
