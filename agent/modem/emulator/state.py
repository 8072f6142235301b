"""The emulated modem's memory: what its firmware knows and the command handlers read and change.

Kept apart from the `Scenario` (the script, fixed at build) and from the device (ports, bytes in
flight, time), so the command table is a set of small functions of (state, command).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.modem.emulator.scenario import Scenario

REG_KINDS = ("CREG", "CGREG", "CEREG")
SIM_STATES = {"ready": "READY", "pin": "SIM PIN", "puk": "SIM PUK"}


@dataclass
class ModemState:
    """Firmware state. `boot()` resets what a reboot resets; the rest survives it."""

    scenario: Scenario
    # kept across reboots (NV memory, or a fault a reboot does not cure by itself)
    contexts: dict[int, tuple[str, str]] = field(default_factory=lambda: {1: ("IPV4V6", "")})
    radio_stuck: bool = False
    needs_reset: bool = False
    reboot_at: float | None = None  # a reset was accepted: the modem drops off the bus at this instant
    # reset by boot()
    echo: bool = True
    cfun: int = 1
    cmee: int = 0
    hung: bool = False
    reg_n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REG_KINDS, 0))
    sim_state: str = "READY"
    pin_left: int = 3
    gnss_on: bool = False
    ready_at: float = 0.0  # answers and registers from this instant
    radio_on_at: float = 0.0
    reported_stat: int = 0  # the registration last announced by URC
    nmea_next: float = 0.0

    def __post_init__(self) -> None:
        self.radio_stuck = self.scenario.radio_stuck
        self.needs_reset = self.scenario.needs_reset

    def boot(self, now: float) -> None:
        """Power-on defaults; the modem answers from `now + boot_s`."""
        sc = self.scenario
        self.echo = sc.echo
        self.cfun = 1
        self.cmee = 0
        self.hung = False
        self.reg_n = dict.fromkeys(REG_KINDS, 0)
        self.sim_state = SIM_STATES.get(sc.sim, "missing")
        self.pin_left = 3
        self.gnss_on = sc.gnss_on
        self.ready_at = now + sc.boot_s
        self.radio_on_at = self.ready_at
        self.reported_stat = 0
        self.nmea_next = self.ready_at

    def cpin_text(self) -> str:
        return "NOT INSERTED" if self.sim_state == "missing" else self.sim_state

    def boot_urcs(self) -> list[str]:
        """What the modem announces once it has booted."""
        urcs = ["RDY", "+CFUN: 1", f"+CPIN: {self.cpin_text()}"]
        if self.scenario.vendor == "quectel":
            urcs += ["+QUSIM: 1", "+QIND: SMS DONE"]
        return urcs

    # -- the registration model ------------------------------------------------------------------
    def registration_stat(self, now: float, *, present: bool = True) -> int:
        """27.007 <stat>: 0 radio off/booting, 2 searching, 3 denied, 1 home, 5 roaming."""
        sc = self.scenario
        if not present or now < self.ready_at or self.cfun != 1 or self.sim_state != "READY":
            return 0
        if self.reboot_at is not None:
            return 0  # shutting down for a reset
        if self.radio_stuck or self.needs_reset:
            return 2
        since = now - self.radio_on_at
        if since < sc.register_delay_s:
            return 2
        if since < sc.register_delay_s + sc.denied_for_s:
            return 3
        return 5 if sc.roaming else 1

    def registered(self, now: float) -> bool:
        return self.registration_stat(now) in (1, 5)

    def reg_fields(self, stat: int, n: int) -> str:
        """`<stat>[,<tac>,<ci>,<AcT>]` as `+CxREG` reports it with URC level `n`."""
        if n >= 2 and stat in (1, 5):
            return f'{stat},"1A2B","01A2B3C4",{self.scenario.act}'
        return str(stat)

    def reg_urc(self, kind: str, n: int, stat: int) -> str:
        return f"+{kind}: {self.reg_fields(stat, n)}"
