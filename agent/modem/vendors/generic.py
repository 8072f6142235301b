"""The 3GPP TS 27.007 base every modem speaks; vendor modules override what they do better."""

from __future__ import annotations

from agent.modem.at import AtError, AtSession
from agent.modem.parse import Signal, parse_iccid, split_fields, to_int


def parse_cesq(text: str) -> Signal | None:
    """`+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>`: LTE indices (255 unknown) to dB/dBm."""
    f = split_fields(text)
    if len(f) < 6:
        return None
    rsrq_i, rsrp_i = to_int(f[4]), to_int(f[5])
    rsrq = -20.0 + rsrq_i / 2 if rsrq_i is not None and 0 <= rsrq_i <= 34 else None
    rsrp = -141.0 + rsrp_i if rsrp_i is not None and 0 <= rsrp_i <= 97 else None
    if rsrq is None and rsrp is None:
        return None
    return Signal(rsrp=rsrp, rsrq=rsrq)


class Vendor:
    """Generic 3GPP modem. Subclasses add vendor signal details, reset and GNSS control."""

    name = "generic"
    supports_gnss = False

    @classmethod
    def matches(cls, manufacturer: str, model: str) -> bool:
        return False

    def iccid(self, at: AtSession) -> str | None:
        """ICCID: +CCID is the common spelling; some modems answer it bare."""
        try:
            resp = at.command("AT+CCID")
        except AtError:
            return None
        for line in resp.lines:
            value = parse_iccid(line.split(":", 1)[-1])
            if value:
                return value
        return None

    def signal_details(self, at: AtSession) -> Signal | None:
        """RSRP/RSRQ from 27.007 +CESQ (indices, converted to the lower bound of each step)."""
        try:
            text = at.command("AT+CESQ").first("+CESQ:")
        except AtError:
            return None
        return parse_cesq(text) if text is not None else None

    def reset(self, at: AtSession, timeout: float | None = None) -> None:
        """Full modem reboot (27.007 +CFUN=1,1). The port usually vanishes and comes back."""
        at.command("AT+CFUN=1,1", timeout=timeout)

    def gnss_enable(self, at: AtSession) -> bool:
        return False

    def gnss_enabled(self, at: AtSession) -> bool | None:
        return None
