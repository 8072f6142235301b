"""The modem stage: LTE link supervisor + GNSS reader, and the `location`/`link` of every event.

`build` is listed in agent.app.STAGE_BUILDERS. It always registers the location provider (GNSS fix
when fresh, else node.location, else null), and adds the stage when there is something to run:
a configured modem port, a GNSS port, or, in `agent --simulate` without a modem, the built-in
emulator (an EC25-like modem whose GNSS stands at node.location or replays gnss.simulate_route), so
a laptop shows the same link telemetry, positions and recovery a pole would.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from agent.gnss.location import LocationProvider
from agent.gnss.reader import GnssReader
from agent.modem.at import open_port
from agent.modem.emulator import NMEA, ModemEmulator, Scenario, register, unregister
from agent.modem.supervisor import LinkSupervisor
from agent.urls import hide_userinfo

if TYPE_CHECKING:
    from agent.app import Agent, Running

log = logging.getLogger(__name__)


class ModemStage:
    """Starts and stops the supervisor and the reader; `status()` is what telemetry publishes."""

    name = "modem"

    def __init__(
        self,
        *,
        supervisor: LinkSupervisor | None,
        gnss: GnssReader | None,
        location: LocationProvider,
        emulator: ModemEmulator | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.gnss = gnss
        self.location = location
        self.emulator = emulator

    def start(self) -> ModemStage:
        if self.supervisor is not None:
            self.supervisor.start()
        if self.gnss is not None:
            self.gnss.start()
        return self

    def stop(self) -> None:
        if self.gnss is not None:
            self.gnss.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.emulator is not None:
            unregister(self.emulator)

    def status(self) -> dict[str, Any]:
        """{"link": supervisor status or None, "gnss": reader status or None, "location": …, "emulated": bool}."""
        return {
            "link": self.supervisor.status() if self.supervisor is not None else None,
            "gnss": self.gnss.status() if self.gnss is not None else None,
            "location": self.location.location(),
            "emulated": self.emulator is not None,
        }


def gnss_source(source: str, *, gnss_port: str, emulated: bool) -> str:
    """Resolve gnss.source = auto: a configured port wins, then the emulator's GNSS, else none."""
    if source != "auto":
        return source
    if gnss_port:
        return "port"
    return "modem" if emulated else "none"


def build(agent: Agent, running: Running) -> ModemStage | None:
    from agent.app import AgentError

    cfg = agent.config
    mcfg, gcfg = cfg.modem, cfg.gnss
    static = (cfg.node.location.lat, cfg.node.location.lon) if cfg.node.location is not None else None
    emulator: ModemEmulator | None = None
    modem_port = mcfg.port if mcfg.mode != "off" else ""
    if agent.options.simulate and not mcfg.port and mcfg.mode != "off":
        lat, lon = static or (Scenario.lat, Scenario.lon)
        try:
            emulator = ModemEmulator(
                Scenario.named(mcfg.simulate_scenario, lat=lat, lon=lon, route=gcfg.simulate_route),
                name=f"sim{os.getpid()}",
            )
        except (OSError, ValueError) as exc:
            raise AgentError(f"gnss.simulate_route: {exc}") from None
        modem_port = register(emulator)
        log.info(
            "no modem configured: simulating one (%s scenario) on %s; GNSS %s",
            mcfg.simulate_scenario,
            modem_port,
            f"replays {gcfg.simulate_route}" if gcfg.simulate_route else f"stands at {lat:.5f}, {lon:.5f}",
        )
    source = gnss_source(gcfg.source, gnss_port=gcfg.port, emulated=emulator is not None)
    gnss_port = gcfg.port
    if source == "modem" and emulator is not None and not gnss_port:
        gnss_port = emulator.url(NMEA)
    if source in ("port", "modem") and not gnss_port:
        raise AgentError(f"gnss.source = {source} needs gnss.port (the receiver's NMEA port)")
    if source == "modem" and not modem_port:
        raise AgentError("gnss.source = modem needs modem.port (GNSS is switched on over the AT port)")

    supervisor = None
    if modem_port:
        settings = mcfg.model_copy(update={"port": modem_port})
        supervisor = LinkSupervisor(
            settings,
            power_cycle=emulator.power_cycle if emulator is not None and not mcfg.power_cycle_command else None,
            gnss_via_modem=source == "modem",
        )
    reader = None
    if source != "none" and gnss_port:
        port, baud = gnss_port, gcfg.baudrate
        reader = GnssReader(
            lambda: open_port(port, baud),
            port_label=hide_userinfo(port),
            clock=running.clock if gcfg.set_clock else None,
            reopen_max_s=gcfg.reopen_max_s,
        )
    location = LocationProvider(static, reader, max_age_s=gcfg.max_fix_age_s)
    running.factory.add_context(location)
    if supervisor is not None:
        sup = supervisor
        running.factory.add_context(lambda: {"link": sup.link_context()})
    else:
        running.factory.add_context(lambda: {"link": None})  # every event says: no modem here
    if supervisor is None and reader is None:
        if emulator is not None:
            unregister(emulator)
        return None
    return ModemStage(supervisor=supervisor, gnss=reader, location=location, emulator=emulator)
