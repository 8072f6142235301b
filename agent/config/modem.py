"""Config tables of the modem stage: the LTE modem (`[modem]`) and positioning (`[gnss]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agent.config.base import Section

SCENARIO_NAMES = (
    "normal",
    "slow",
    "urc-mid-response",
    "sim-missing",
    "pin-required",
    "denied-then-granted",
    "radio-stuck",
    "needs-reset",
    "hang",
    "vanish",
    "roaming",
    "flaky",
)


class ModemConfig(Section):
    mode: Literal["managed", "monitor", "off"] = Field(
        default="managed",
        description="managed: configure the modem (PIN, APN) and recover a dead link (radio off/on, reset, "
        "power cycle); monitor: only read its state; off: leave it alone. If ModemManager owns the port "
        "the agent never touches it and says how to hand it over.",
    )
    port: str = Field(
        default="",
        description="AT port: a device (/dev/ttyUSB2, a udev name such as /dev/vigil-at) or a pyserial URL "
        "(rfc2217://host:port, vigilemu://NAME for the built-in emulator). Empty: no modem; "
        "`agent --simulate` then runs the built-in emulator.",
    )
    baudrate: int = Field(default=115200, ge=1200, le=4_000_000, description="AT port baud rate (UART modems).")
    vendor: Literal["auto", "quectel", "simcom", "generic"] = Field(
        default="auto", description="Vendor specifics to use; auto chooses from AT+CGMI/AT+CGMM."
    )
    pin: str | None = Field(
        default=None,
        repr=False,
        pattern=r"^[0-9]{4,8}$",
        description="SIM PIN, entered once per modem boot when the SIM asks for it; never logged. A rejected "
        "PIN is not retried (the SIM would lock after three tries).",
    )
    apn: str = Field(
        default="",
        max_length=100,
        description="APN written to PDP context 1 when it differs. Empty: keep what the modem has.",
    )
    pdp_type: Literal["IP", "IPV6", "IPV4V6"] = Field(default="IPV4V6", description="PDP type for the APN.")
    poll_interval_s: float = Field(
        default=30.0, ge=0.05, le=3600, description="How often registration, signal and attach are read."
    )
    command_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Timeout of ordinary AT commands (network scans, attach and resets get their longer "
        "vendor-documented limits).",
    )
    unresponsive_after: int = Field(
        default=3, ge=1, le=50, description="Consecutive unanswered commands after which the modem counts as hung."
    )
    recovery_grace_s: float = Field(
        default=120.0,
        ge=0,
        description="How long the link may be down (not registered or not attached) before recovery starts; "
        "registration after boot or a cell change takes a while.",
    )
    step_wait_s: float = Field(
        default=90.0,
        gt=0,
        description="After each recovery step (re-query, radio off/on, reset, power cycle), how long to wait "
        "for the link before trying the next one.",
    )
    retry_max_s: float = Field(
        default=1800.0,
        gt=0,
        description="When every step has failed the ladder starts over after a pause that doubles up to this cap.",
    )
    reopen_max_s: float = Field(
        default=30.0, gt=0, description="Cap of the backoff between attempts to reopen a vanished port."
    )
    power_cycle_command: str = Field(
        default="",
        description="Shell command that cuts and restores the modem's power (GPIO, USB hub port), the last "
        "recovery step; some modems recover from a hang only this way. Empty: no power step.",
    )
    power_cycle_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="How long the power-cycle command may run."
    )
    simulate_scenario: Literal[SCENARIO_NAMES] = Field(  # type: ignore[valid-type]
        default="normal",
        description="Simulate only (no port configured): how the built-in emulated modem behaves: "
        + ", ".join(SCENARIO_NAMES)
        + ".",
    )

    @field_validator("port")
    @classmethod
    def _port_not_blank(cls, value: str) -> str:
        return value.strip()


class GnssConfig(Section):
    source: Literal["auto", "none", "port", "modem"] = Field(
        default="auto",
        description="Where positions come from. port: a receiver that streams NMEA on gnss.port (u-blox, "
        "MediaTek); modem: switch on the modem's GNSS (AT+QGPS / AT+CGPS) and read NMEA from gnss.port; "
        "none: use node.location only; auto: port when gnss.port is set, the emulator's GNSS in "
        "`agent --simulate` without a modem, else none.",
    )
    port: str = Field(
        default="",
        description="NMEA port: a device (/dev/ttyUSB1, /dev/vigil-nmea, /dev/serial0) or a pyserial URL.",
    )
    baudrate: int = Field(default=9600, ge=1200, le=921_600, description="NMEA port baud rate (UART receivers).")
    max_fix_age_s: float = Field(
        default=10.0,
        gt=0,
        description="A fix older than this is stale: events then carry node.location (or no location).",
    )
    set_clock: bool = Field(
        default=True,
        description="Use GNSS time (2D/3D fix, after GPS week-rollover correction) to mark event timestamps "
        "trusted when NTP is absent.",
    )
    reopen_max_s: float = Field(
        default=30.0, gt=0, description="Cap of the backoff between attempts to reopen a lost NMEA port."
    )
    simulate_route: Path | None = Field(
        default=None,
        description="Simulate only: an NMEA log the emulated receiver replays (re-stamped to now) instead "
        "of standing still at node.location.",
    )

    @field_validator("port")
    @classmethod
    def _port_not_blank(cls, value: str) -> str:
        return value.strip()
