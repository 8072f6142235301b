"""The modem stage: LTE link supervisor + GNSS reader, and the `location`/`link` of every event.

`build` is listed in agent.app.STAGE_BUILDERS. It always registers the location provider (GNSS fix
when fresh, else node.location, else null), and adds the stage when there is something to run:
a configured modem port, a GNSS port, or, in `agent --simulate` without a modem, the built-in
emulator (an EC25-like modem whose GNSS stands at node.location or replays gnss.simulate_route), so
a laptop shows the same link telemetry, positions and recovery a pole would. The emulator is
reached like any modem, by the URL of its port (`vigilemu://`): this module never imports it.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from agent.gnss.location import LocationProvider
from agent.gnss.reader import GnssReader
from agent.lifecycle import deadline_in
from agent.modem.at import open_port
from agent.modem.supervisor import LinkSupervisor
from agent.modem.urlhandlers import emulator_url, release
from agent.urls import hide_userinfo

if TYPE_CHECKING:
    from agent.app import Agent, Running
    from agent.config.modem import GnssConfig, ModemConfig

log = logging.getLogger(__name__)

SIMULATED_POSITION = (52.37403, 4.88969)  # where the emulated receiver stands without node.location
STOP_WITHIN_S = 3.0
_simulations = itertools.count(1)


@dataclass(frozen=True)
class SimulatedModem:
    """The emulated modem of `agent --simulate`: known by its name, powered through a switch file
    (the emulator's stand-in for a GPIO relay)."""

    name: str
    switch_dir: Path

    @property
    def url(self) -> str:
        return emulator_url(self.name)

    @property
    def nmea_url(self) -> str:
        return emulator_url(self.name, nmea=True)

    def power_cycle(self) -> bool:
        (self.switch_dir / "power").touch()
        return True

    def close(self) -> None:
        release(self.url)
        shutil.rmtree(self.switch_dir, ignore_errors=True)


def plug_in_simulated_modem(mcfg: ModemConfig, gcfg: GnssConfig, position: tuple[float, float]) -> SimulatedModem:
    """Describe the emulated modem in a URL and open it once, so it exists (and a route that cannot
    be read fails here, with one clear line) before the supervisor and the reader start."""
    sim = SimulatedModem(f"sim{os.getpid()}-{next(_simulations)}", Path(tempfile.mkdtemp(prefix="vigil-sim-modem-")))
    described = emulator_url(
        sim.name,
        scenario=mcfg.simulate_scenario,
        timing="real",
        lat=position[0],
        lon=position[1],
        route=gcfg.simulate_route,
        power_switch=sim.switch_dir / "power",
    )
    try:
        open_port(described).close()
    except Exception as exc:  # SerialException, with the emulator's own reason as its cause
        sim.close()
        what = "gnss.simulate_route" if gcfg.simulate_route else "the emulated modem"
        raise AgentError(f"{what}: {exc.__cause__ or exc}") from None
    return sim


class ModemStage:
    """Starts and stops the supervisor and the reader; `status()` is what telemetry publishes."""

    name = "modem"

    def __init__(
        self,
        *,
        supervisor: LinkSupervisor | None,
        gnss: GnssReader | None,
        location: LocationProvider,
        simulated: SimulatedModem | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.gnss = gnss
        self.location = location
        self.simulated = simulated

    def start(self) -> ModemStage:
        if self.supervisor is not None:
            self.supervisor.start()
        if self.gnss is not None:
            self.gnss.start()
        return self

    def request_stop(self) -> None:
        if self.gnss is not None:
            self.gnss.request_stop()
        if self.supervisor is not None:
            self.supervisor.request_stop()

    def stop(self, deadline: float | None = None) -> None:
        """Stop the reader and the supervisor by `deadline` (a `time.monotonic()` instant)."""
        deadline = time.monotonic() + STOP_WITHIN_S if deadline is None else deadline
        if self.gnss is not None:
            self.gnss.stop(min(deadline, deadline_in(2.0)))
        if self.supervisor is not None:
            self.supervisor.stop(deadline)
        if self.simulated is not None:
            self.simulated.close()

    def status(self) -> dict[str, Any]:
        """{"link": supervisor status or None, "gnss": reader status or None, "location": …, "emulated": bool}."""
        return {
            "link": self.supervisor.status() if self.supervisor is not None else None,
            "gnss": self.gnss.status() if self.gnss is not None else None,
            "location": self.location.location(),
            "emulated": self.simulated is not None,
        }


def gnss_source(source: str, *, gnss_port: str, emulated: bool) -> str:
    """Resolve gnss.source = auto: a configured port wins, then the emulator's GNSS, else none."""
    if source != "auto":
        return source
    if gnss_port:
        return "port"
    return "modem" if emulated else "none"


def build(agent: Agent, running: Running) -> ModemStage | None:
    cfg = agent.config
    mcfg, gcfg = cfg.modem, cfg.gnss
    static = (cfg.node.location.lat, cfg.node.location.lon) if cfg.node.location is not None else None
    simulated: SimulatedModem | None = None
    modem_port = mcfg.port if mcfg.mode != "off" else ""
    if agent.options.simulate and not mcfg.port and mcfg.mode != "off":
        lat, lon = static or SIMULATED_POSITION
        simulated = plug_in_simulated_modem(mcfg, gcfg, (lat, lon))
        modem_port = simulated.url
        log.info(
            "no modem configured: simulating one (%s scenario) on %s; GNSS %s",
            mcfg.simulate_scenario,
            modem_port,
            f"replays {gcfg.simulate_route}" if gcfg.simulate_route else f"stands at {lat:.5f}, {lon:.5f}",
        )
    source = gnss_source(gcfg.source, gnss_port=gcfg.port, emulated=simulated is not None)
    gnss_port = gcfg.port
    if source == "modem" and simulated is not None and not gnss_port:
        gnss_port = simulated.nmea_url
    try:
        if source in ("port", "modem") and not gnss_port:
            raise AgentError(f"gnss.source = {source} needs gnss.port (the receiver's NMEA port)")
        if source == "modem" and not modem_port:
            raise AgentError("gnss.source = modem needs modem.port (GNSS is switched on over the AT port)")
    except AgentError:
        if simulated is not None:
            simulated.close()
        raise

    supervisor = None
    if modem_port:
        settings = mcfg.model_copy(update={"port": modem_port})
        supervisor = LinkSupervisor(
            settings,
            power_cycle=simulated.power_cycle if simulated is not None and not mcfg.power_cycle_command else None,
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
        if simulated is not None:
            simulated.close()
        return None
    return ModemStage(supervisor=supervisor, gnss=reader, location=location, simulated=simulated)
