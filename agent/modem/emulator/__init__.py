"""A scripted LTE modem with GNSS, for tests and `agent --simulate`.

- `scenario.py`: the knobs (`Scenario`) and named presets (`SCENARIOS`);
- `state.py`: what the firmware remembers (`ModemState`), apart from the script;
- `table.py`, `commands.py`: the command table (pattern → handler → `Reply`);
- `device.py`: `ModemEmulator`, the ports, time, URCs, NMEA and faults;
- `pty.py`: `PtyLink`, real pseudo-terminals behind udev-like symlinks;
- `registry.py`: the named emulators `vigilemu://NAME` URLs reach.

Production code never imports this package: it opens `vigilemu://` URLs, and pyserial imports
`agent.modem.urlhandlers.protocol_vigilemu` (and with it this package) only then.
"""

from agent.modem.emulator.commands import COMMANDS
from agent.modem.emulator.device import AT, NMEA, ModemEmulator, PortGone
from agent.modem.emulator.nmea import load_route, restamp, static_cycle
from agent.modem.emulator.pty import PtyLink
from agent.modem.emulator.registry import forget, lookup, register, registered, unregister
from agent.modem.emulator.scenario import SCENARIOS, EmulatorCounters, Scenario
from agent.modem.emulator.state import ModemState
from agent.modem.emulator.table import Call, CommandTable, Reply

__all__ = [
    "AT",
    "COMMANDS",
    "NMEA",
    "SCENARIOS",
    "Call",
    "CommandTable",
    "EmulatorCounters",
    "ModemEmulator",
    "ModemState",
    "PortGone",
    "PtyLink",
    "Reply",
    "Scenario",
    "forget",
    "load_route",
    "lookup",
    "register",
    "registered",
    "restamp",
    "static_cycle",
    "unregister",
]
