"""What the emulated modem is told to be: the knobs of a scenario, and the named presets.

A `Scenario` is the script, fixed when the modem is built (faults injected later live in the
device's state, see `state.py`). Times are seconds of monotonic time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Where the emulated receiver stands when nobody says otherwise (Amsterdam, Dam square).
DEFAULT_POSITION = (52.37403, 4.88969)

# Identity per emulated vendor: manufacturer, model, firmware, IMEI.
IDENTITY: dict[str, tuple[str, str, str, str]] = {
    "quectel": ("Quectel", "EC25", "EC25EFAR06A06M4G", "866758041234567"),
    "simcom": ("SIMCOM INCORPORATED", "SIMCOM_SIM7600E-H", "LE20B04SIM7600M22", "862636051234568"),
    "generic": ("Generic", "LTE Modem", "1.0.0", "353456789012345"),
}
ICCID = "8931440400012345678"


@dataclass
class Scenario:
    """Knobs of the emulated modem. Times are seconds of real (monotonic) time."""

    vendor: str = "quectel"
    echo: bool = True  # echo commands until ATE0, as modems do after boot
    sim: str = "ready"  # ready | missing | pin | puk
    pin: str = "1234"
    operator: str = "Vigil Test Network"
    mcc_mnc: str = "00101"
    act: int = 7  # LTE
    roaming: bool = False
    csq: int = 20
    rsrp: int = -95
    rsrq: int = -10
    rssi: int = -65
    sinr: int = 12
    register_delay_s: float = 1.0  # searching this long after the radio comes on
    denied_for_s: float = 0.0  # then denied this long, then registered
    radio_stuck: bool = False  # searching until the radio is cycled (CFUN 0 → 1)
    needs_reset: bool = False  # searching until a full reset (CFUN=1,1 / CRESET)
    reply_delay_s: float = 0.0  # every answer comes this late
    slow_commands: dict[str, float] = field(default_factory=dict)  # command prefix → extra delay
    urc_mid_response: bool = False  # URCs between a response and its OK
    hang_after_commands: int | None = None  # stop answering after N commands, until power cycled
    vanish_after_commands: int | None = None  # the port vanishes after N commands (USB glitch)
    vanish_for_s: float = 2.0
    reboot_s: float = 0.5  # port absent during a reset/power cycle (USB re-enumeration)
    boot_s: float = 0.3  # then this long before RDY and answers
    flaky_period_s: float | None = None  # simulate: a fault every period (stuck radio, then a hang)
    power_switch: Path | None = None  # touching this file power-cycles the modem (a GPIO stand-in)
    lat: float = DEFAULT_POSITION[0]
    lon: float = DEFAULT_POSITION[1]
    alt: float = 2.0
    route: Path | None = None  # NMEA log replayed (re-stamped to now) instead of a fixed position
    nmea_interval_s: float = 1.0
    gnss_on: bool = False  # GNSS engine running at boot (a standalone receiver is always on)
    # command (upper case, no spaces) -> (information lines, final result): well-framed nonsense answered
    # instead of the normal reply, for tests of what the agent does with it
    garbled: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vendor not in IDENTITY:
            raise ValueError(f"unknown emulated vendor {self.vendor!r}; known: {', '.join(sorted(IDENTITY))}")

    @classmethod
    def named(cls, name: str, **overrides: Any) -> Scenario:
        if name not in SCENARIOS:
            raise ValueError(f"unknown modem scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown scenario settings: {', '.join(sorted(unknown))}")
        return replace(cls(**SCENARIOS[name]), **overrides)


SCENARIOS: dict[str, dict[str, Any]] = {
    "normal": {},
    "slow": {"reply_delay_s": 0.3, "slow_commands": {"AT+COPS?": 2.0}},
    "urc-mid-response": {"urc_mid_response": True},
    "sim-missing": {"sim": "missing"},
    "pin-required": {"sim": "pin"},
    "denied-then-granted": {"denied_for_s": 20.0},
    "radio-stuck": {"radio_stuck": True},
    "needs-reset": {"needs_reset": True},
    "hang": {"hang_after_commands": 40},
    "vanish": {"vanish_after_commands": 40},
    "roaming": {"roaming": True, "operator": "Vigil Roaming Partner"},
    "flaky": {"flaky_period_s": 300.0},
}


@dataclass
class EmulatorCounters:
    """What happened to the emulated modem, for tests to assert on."""

    commands: int = 0
    resets: int = 0
    radio_cycles: int = 0
    power_cycles: int = 0
    pin_attempts: int = 0
    unplugs: int = 0
    dropped_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
