"""One frozen picture of the LTE link, and what an unsolicited line changes in it.

The poller produces a `LinkSample` per poll; URCs between polls produce the next one with
`apply_urc`; the supervisor publishes the latest and the recovery ladder judges it. Everything
here is a pure function of its inputs: the link's state (`online`, `searching`, `sim_locked`…)
and whether it is up are derived from the sample, never stored beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from agent.modem.parse import Registration, Signal, parse_cpin, parse_registration

REG_KINDS = ("CEREG", "CGREG", "CREG")  # preference order: LTE (EPS), packet, circuit
LOCKED_SIM = frozenset({"SIM PIN", "SIM PUK", "PH-SIM PIN"})
REBOOT_URCS = frozenset({"RDY", "START"})
POWER_DOWN_URCS = frozenset({"POWERED DOWN", "NORMAL POWER DOWN"})

# starting: not opened yet; open: the agent talks AT on it; absent: it cannot be opened (unplugged,
# re-enumerating, a bad URL); modemmanager: ModemManager owns it and the agent keeps off.
PortState = Literal["starting", "open", "absent", "modemmanager"]


@dataclass(frozen=True)
class LinkSample:
    """The link at one instant: port, SIM, registrations, operator, signal, packet attach, and
    how many AT commands went unanswered in a row."""

    at: float  # monotonic instant of this picture
    port: PortState = "starting"
    port_message: str = ""  # why the port is absent, or how to hand it over from ModemManager
    sim: str | None = None  # READY, SIM PIN, SIM PUK, MISSING, … (None: not read yet)
    cereg: Registration | None = None
    cgreg: Registration | None = None
    creg: Registration | None = None
    operator: str | None = None
    operator_technology: str | None = None  # from +COPS (used when the registration has none)
    signal: Signal = field(default_factory=Signal)
    attached: bool | None = None  # +CGATT: packet-domain attach (None: unknown)
    timeouts: int = 0  # AT commands unanswered in a row
    unresponsive: bool = False  # timeouts reached modem.unresponsive_after; cleared by an answer
    polled_at: float | None = None  # when registration, operator, signal and attach were read

    # -- registrations ------------------------------------------------------------------------------
    def registration_of(self, kind: str) -> Registration | None:
        return {"CEREG": self.cereg, "CGREG": self.cgreg, "CREG": self.creg}.get(kind)

    def with_registration(self, kind: str, reg: Registration | None) -> LinkSample:
        if kind == "CEREG":
            return replace(self, cereg=reg)
        if kind == "CGREG":
            return replace(self, cgreg=reg)
        if kind == "CREG":
            return replace(self, creg=reg)
        raise ValueError(f"not a registration kind: {kind}")

    @property
    def registration(self) -> tuple[str | None, Registration | None]:
        """The most useful registration and where it came from: a registered EPS/packet one first,
        circuit-switched only when those are not reported, else the most telling failure."""
        for kind in REG_KINDS[:2]:
            reg = self.registration_of(kind)
            if reg is not None and reg.registered:
                return kind, reg
        if self.creg is not None and self.creg.registered and self.cereg is None and self.cgreg is None:
            return "CREG", self.creg
        for wanted in ("denied", "searching", "emergency_only", "not_registered", "unknown"):
            for kind in REG_KINDS:
                reg = self.registration_of(kind)
                if reg is not None and reg.state == wanted:
                    return kind, reg
        return None, None

    @property
    def registration_state(self) -> str | None:
        return self.registration[1].state if self.registration[1] is not None else None

    @property
    def technology(self) -> str | None:
        reg = self.registration[1]
        return (reg.technology if reg is not None else None) or self.operator_technology

    # -- judgement ----------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """starting, absent, modemmanager, no_response, sim_missing, sim_locked, sim_error, denied,
        searching, not_attached or online."""
        if self.port != "open":
            return self.port
        if self.unresponsive:
            return "no_response"
        if self.sim == "MISSING":
            return "sim_missing"
        if self.sim in LOCKED_SIM:
            return "sim_locked"
        if self.sim not in (None, "READY"):
            return "sim_error"
        reg = self.registration[1]
        if reg is None:
            return "starting"
        if reg.state == "denied":
            return "denied"
        if not reg.registered:
            return "searching"
        if self.attached is False:
            return "not_attached"
        return "online"

    @property
    def up(self) -> bool:
        """Registered with a ready SIM, answering, and not known to be detached: data can flow."""
        return self.state == "online" and self.sim == "READY"

    def closed(self, now: float, port: PortState, message: str) -> LinkSample:
        """The port is gone or taken: what was last read stays for the record."""
        return replace(self, at=now, port=port, port_message=message)


@dataclass(frozen=True)
class UrcEffect:
    """What one unsolicited line did: the next sample and what the supervisor should do."""

    sample: LinkSample
    poll_soon: bool = False  # operator, signal and attach change with the registration
    needs_setup: bool = False  # the modem rebooted or lost its SIM: set it up again
    warning: str | None = None


def apply_urc(sample: LinkSample, line: str, now: float) -> UrcEffect:
    """Fold one URC into the sample. Unknown or malformed lines change nothing."""
    if line in REBOOT_URCS:
        return UrcEffect(sample, poll_soon=True, needs_setup=True)
    if line in POWER_DOWN_URCS:
        return UrcEffect(sample, warning=f"modem reports {line.lower()}")
    if not line.startswith("+") or ":" not in line:
        return UrcEffect(sample)
    kind, text = line[1:].split(":", 1)
    if kind == "CPIN":
        sim = parse_cpin(text)
        return UrcEffect(replace(sample, at=now, sim=sim), needs_setup=sim != "READY")
    if kind not in REG_KINDS:
        return UrcEffect(sample)
    reg = parse_registration(text, solicited=False)
    if reg is None:
        return UrcEffect(sample)
    old = sample.registration_of(kind)
    if old is not None and reg.area is None and old.state == reg.state:
        reg = old  # a short-form URC (stat only) repeats what we know
    was = sample.registration_state
    after = replace(sample.with_registration(kind, reg), at=now)
    if reg.registered != (was in ("home", "roaming")):
        after = replace(after, attached=None)  # unknown until the next poll reads it
    return UrcEffect(after, poll_soon=after.registration_state != was)
