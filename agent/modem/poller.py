"""One poll of the link: SIM, registrations, operator, signal and packet attach → a `LinkSample`.

Every `modem.poll_interval_s` (and at once after a registration URC) the supervisor asks for one
sample. Each command has its own timeout; a timeout propagates (the supervisor counts it and keeps
the previous sample), a refused command leaves its field unknown. The EPS/packet registration wins
over the circuit one (see `LinkSample.registration`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.modem.at import AtSession
from agent.modem.parse import Registration, Signal, parse_cops, parse_csq, parse_registration
from agent.modem.sample import REG_KINDS, LinkSample
from agent.modem.setup import attempt, read_sim
from agent.modem.vendors import Vendor


def merge_signal(csq: Signal | None, details: Signal | None) -> Signal:
    """+CSQ (every modem) completed by the vendor's RSRP/RSRQ/SINR, whose RSSI wins when it has one."""
    base = csq or Signal()
    if details is None:
        return base
    return Signal(
        rssi_dbm=details.rssi_dbm if details.rssi_dbm is not None else base.rssi_dbm,
        csq=base.csq,
        ber=base.ber,
        rsrp=details.rsrp,
        rsrq=details.rsrq,
        sinr=details.sinr,
    )


class Poller:
    """Reads the link; holds nothing but the clock that stamps its samples."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock

    def poll(self, at: AtSession, vendor: Vendor | None, sim: str | None = None) -> LinkSample:
        """One sample of an open port. `sim`: the SIM state if the caller just read it."""
        sim = read_sim(at) if sim is None else sim
        if sim != "READY":  # no network without a SIM: nothing else to ask
            now = self.clock()
            return LinkSample(at=now, port="open", sim=sim, polled_at=now)
        regs = {kind: self.registration(at, kind) for kind in REG_KINDS}
        resp = attempt(at, "AT+COPS?")
        cops = parse_cops(resp.first("+COPS:") or "") if resp is not None else None
        resp = attempt(at, "AT+CSQ")
        csq = parse_csq(resp.first("+CSQ:") or "") if resp is not None else None
        details = vendor.signal_details(at) if vendor is not None else None
        resp = attempt(at, "AT+CGATT?")
        text = resp.first("+CGATT:") if resp is not None else None
        now = self.clock()
        return LinkSample(
            at=now,
            port="open",
            sim=sim,
            cereg=regs["CEREG"],
            cgreg=regs["CGREG"],
            creg=regs["CREG"],
            operator=cops.name if cops is not None else None,
            operator_technology=cops.technology if cops is not None else None,
            signal=merge_signal(csq, details),
            attached=text.strip() == "1" if text else None,
            polled_at=now,
        )

    @staticmethod
    def registration(at: AtSession, kind: str) -> Registration | None:
        resp = attempt(at, f"AT+{kind}?")
        text = resp.first(f"+{kind}:") if resp is not None else None
        return parse_registration(text, solicited=True) if text else None
