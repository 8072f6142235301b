"""Setting the modem up after every open and every reboot: handshake, identity, SIM, URCs, APN,
radio, GNSS.

`ModemSetup` runs the sequence over an AT session and remembers what must outlive a reboot: the
vendor, and that the SIM rejected the configured PIN (it is never tried again, so the SIM cannot
lock into PUK). In `modem.mode = "monitor"` nothing is written. Timeouts and a lost port propagate
to the caller, which counts them; a refused command (ERROR) is tolerated where a modem may lack it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from agent.config.modem import ModemConfig
from agent.modem.at import AtError, AtResponse, AtSession, AtTimeout
from agent.modem.parse import parse_cgdcont, parse_cpin, text_field
from agent.modem.sample import REG_KINDS
from agent.modem.vendors import Vendor, choose_vendor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModemIdentity:
    manufacturer: str | None
    model: str | None
    firmware: str | None
    imei: str | None
    vendor: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "manufacturer": self.manufacturer,
            "model": self.model,
            "firmware": self.firmware,
            "imei": self.imei,
            "vendor": self.vendor,
        }


@dataclass(frozen=True)
class SetupFacts:
    """What set-up learnt (status shows it); replaced whole, so readers on other threads see one."""

    identity: ModemIdentity | None = None
    iccid: str | None = None
    apn: str | None = None  # PDP context 1's APN, as set or found
    gnss_enabled: bool | None = None


def attempt(at: AtSession, command: str) -> AtResponse | None:
    """A command whose refusal (ERROR) is tolerable; timeouts and a lost port still propagate."""
    try:
        return at.command(command)
    except AtError as exc:
        log.debug("%s refused: %s", command, exc.reason)
        return None


def read_sim(at: AtSession) -> str:
    """READY, SIM PIN, SIM PUK, …, or MISSING / ERROR / UNKNOWN."""
    try:
        text = at.command("AT+CPIN?").first("+CPIN:")
    except AtError as exc:
        if exc.code in (11, 12):
            return "SIM PIN" if exc.code == 11 else "SIM PUK"
        return "MISSING" if exc.code == 10 else ("ERROR" if exc.code is not None else "UNKNOWN")
    state = parse_cpin(text or "")
    return "MISSING" if state == "NOT INSERTED" else state


class ModemSetup:
    """The set-up sequence, and what it must remember across opens and reboots."""

    def __init__(self, config: ModemConfig, *, gnss_via_modem: bool = False) -> None:
        self.config = config
        self.gnss_via_modem = gnss_via_modem
        self.facts = SetupFacts()
        self.vendor: Vendor | None = None
        self.pin_rejected = False
        self.sim_at_setup: str | None = None  # the SIM state the last complete set-up saw

    @property
    def managed(self) -> bool:
        return self.config.mode == "managed"

    def run(self, at: AtSession) -> str:
        """The whole sequence; returns the SIM state. Raises AtTimeout when the modem is silent."""
        cfg = self.config
        probe = min(1.0, cfg.command_timeout_s)
        if not any(at.ping(timeout=probe) for _ in range(3)):  # the first AT after boot may be eaten
            raise AtTimeout("no answer to AT")
        if self.managed:
            attempt(at, "ATE0")
            attempt(at, "AT+CMEE=1")
        self.identify(at)
        sim = self.unlock_sim(at)
        if self.managed:
            if self.gnss_via_modem:
                self.enable_gnss(at)
            if sim == "READY":
                for kind in REG_KINDS:
                    attempt(at, f"AT+{kind}=2")
                self.ensure_apn(at)
                self.ensure_radio(at)
        self.sim_at_setup = sim
        return sim

    def incomplete(self, sim: str) -> bool:
        """The SIM became ready after set-up (a slow unlock, a re-seated card): finish the set-up."""
        return sim == "READY" and self.sim_at_setup != "READY"

    # -- identity -----------------------------------------------------------------------------------
    def identify(self, at: AtSession) -> ModemIdentity:
        def text(command: str) -> str:
            resp = attempt(at, command)
            if resp is None or not resp.lines:
                return ""
            line = resp.lines[0]
            value = line.split(":", 1)[1].strip() if line.startswith("+") and ":" in line else line
            return text_field(value, 32) or ""

        manufacturer, model = text("AT+CGMI"), text("AT+CGMM")
        firmware, imei = text("AT+CGMR"), text("AT+CGSN")
        vendor = choose_vendor(self.config.vendor, manufacturer, model)
        before = self.facts.identity
        identity = ModemIdentity(manufacturer or None, model or None, firmware or None, imei or None, vendor.name)
        if before is None or before.imei != identity.imei or self.vendor is None:
            log.info("modem: %s %s (firmware %s), vendor support: %s", manufacturer, model, firmware, vendor.name)
        self.vendor = vendor
        self.facts = replace(self.facts, identity=identity)
        return identity

    # -- SIM ----------------------------------------------------------------------------------------
    def wants_pin(self, sim: str) -> bool:
        """Enter the PIN: asked for, configured, allowed to write, and never rejected before."""
        return sim == "SIM PIN" and self.managed and bool(self.config.pin) and not self.pin_rejected

    def unlock_sim(self, at: AtSession, sim: str | None = None) -> str:
        """The SIM state after entering the configured PIN once if the SIM asks; reads the ICCID of
        a ready SIM."""
        state = read_sim(at) if sim is None else sim
        if self.wants_pin(state):
            log.info("SIM asks for its PIN; entering the configured PIN")
            try:
                at.command(f'AT+CPIN="{self.config.pin}"')
            except AtError as exc:
                self.pin_rejected = True
                log.error(
                    "the SIM rejected the configured PIN (%s); not retrying, so the SIM does not lock "
                    "(PUK). Fix modem.pin and restart the agent.",
                    exc.reason,
                )
            state = read_sim(at)
        if state == "READY":
            iccid = self.vendor.iccid(at) if self.vendor is not None else None
            self.facts = replace(self.facts, iccid=iccid)
        return state

    def settle_sim(self, at: AtSession, sim: str) -> str:
        """During polls: a SIM that asks for its PIN gets it (once ever, if it is rejected)."""
        return self.unlock_sim(at, sim) if self.wants_pin(sim) else sim

    # -- data and radio -----------------------------------------------------------------------------
    def ensure_apn(self, at: AtSession) -> None:
        cfg = self.config
        resp = attempt(at, "AT+CGDCONT?")
        contexts = parse_cgdcont(resp.all("+CGDCONT:")) if resp is not None else []
        current = next((c for c in contexts if c.cid == 1), None)
        if cfg.apn and (current is None or current.apn != cfg.apn or current.pdp_type != cfg.pdp_type):
            log.info("setting APN %r (%s) on PDP context 1", cfg.apn, cfg.pdp_type)
            if attempt(at, f'AT+CGDCONT=1,"{cfg.pdp_type}","{cfg.apn}"') is not None:
                self.facts = replace(self.facts, apn=cfg.apn)
                return
        self.facts = replace(self.facts, apn=current.apn if current is not None else None)

    def ensure_radio(self, at: AtSession) -> None:
        resp = attempt(at, "AT+CFUN?")
        value = resp.first("+CFUN:") if resp is not None else None
        if value is not None and value.split(",")[0].strip() != "1":
            log.info("modem radio was off (CFUN %s); switching it on", value)
            attempt(at, "AT+CFUN=1")

    # -- GNSS ---------------------------------------------------------------------------------------
    def enable_gnss(self, at: AtSession) -> None:
        vendor = self.vendor
        if vendor is None:
            return
        if not vendor.supports_gnss:
            log.warning("gnss.source is modem but %s modems are not supported for GNSS", vendor.name)
            return
        try:
            vendor.gnss_enable(at)
        except AtError as exc:
            log.warning("could not switch on the modem's GNSS: %s", exc.reason)
        self.check_gnss(at)

    def check_gnss(self, at: AtSession) -> None:
        """Read whether the modem's GNSS engine runs (read-only; `agent modem status` uses it)."""
        if self.vendor is not None:
            self.facts = replace(self.facts, gnss_enabled=self.vendor.gnss_enabled(at))
