"""SIMCom SIM7500/SIM7600 (and kin): +CPSI signal, +CICCID, +CRESET, GNSS via +CGPS.

`+CPSI: LTE,Online,<mcc>-<mnc>,<tac>,<scellid>,<pcellid>,<band>,<earfcn>,<dlbw>,<ulbw>,<rsrq>,
<rsrp>,<rssi>,<rssnr>` with RSRQ/RSRP/RSSI in tenths of a dB(m) and RSSNR in dB.
"""

from __future__ import annotations

from agent.modem.at import AtError, AtSession
from agent.modem.parse import Signal, parse_iccid, split_fields, to_float
from agent.modem.vendors.generic import Vendor


def parse_cpsi(text: str) -> Signal | None:
    f = split_fields(text)
    if len(f) < 14 or f[0] != "LTE" or f[1].upper() != "ONLINE":
        return None
    rsrq, rsrp, rssi, snr = (to_float(x) for x in f[10:14])
    return Signal(
        rssi_dbm=rssi / 10.0 if rssi is not None else None,
        rsrp=rsrp / 10.0 if rsrp is not None else None,
        rsrq=rsrq / 10.0 if rsrq is not None else None,
        sinr=snr,
    )


class SimCom(Vendor):
    name = "simcom"
    supports_gnss = True

    @classmethod
    def matches(cls, manufacturer: str, model: str) -> bool:
        return "SIMCOM" in manufacturer.upper() or model.upper().startswith(("SIM7", "A76"))

    def iccid(self, at: AtSession) -> str | None:
        try:
            text = at.command("AT+CICCID").first("+ICCID:")
        except AtError:
            return super().iccid(at)
        return parse_iccid(text) if text else None

    def signal_details(self, at: AtSession) -> Signal | None:
        try:
            text = at.command("AT+CPSI?").first("+CPSI:")
        except AtError:
            return super().signal_details(at)
        return parse_cpsi(text) if text else None

    def reset(self, at: AtSession, timeout: float | None = None) -> None:
        at.command("AT+CRESET", timeout=timeout)

    def gnss_enable(self, at: AtSession) -> bool:
        if self.gnss_enabled(at):
            return True
        at.command("AT+CGPS=1,1")  # standalone mode; NMEA on the modem's NMEA port
        return True

    def gnss_enabled(self, at: AtSession) -> bool | None:
        try:
            text = at.command("AT+CGPS?").first("+CGPS:")
        except AtError:
            return None
        return text is not None and text.strip().startswith("1")
