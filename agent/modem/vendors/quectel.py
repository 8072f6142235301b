"""Quectel EC2x/EG2x/EG9x (and kin): +QENG/+QCSQ signal, +QCCID, GNSS via +QGPS.

Formats from the EC25/EC21 AT manual and real modem output:
`+QENG: "servingcell",<state>,"LTE",<duplex>,<mcc>,<mnc>,<cellid>,<pcid>,<earfcn>,<band>,<ul_bw>,
<dl_bw>,<tac>,<rsrp>,<rsrq>,<rssi>,<sinr>,…` (SINR in dB), and `+QCSQ: "LTE",<rssi>,<rsrp>,<sinr>,
<rsrq>` where SINR is in fifths of a dB offset by -20 dB (0..250 → -20..+30 dB).
"""

from __future__ import annotations

from agent.modem.at import AtError, AtSession
from agent.modem.parse import Signal, parse_iccid, split_fields, to_float
from agent.modem.vendors.generic import Vendor


def _value(text: str) -> float | None:
    return None if text in ("", "-") else to_float(text)


def parse_qeng_servingcell(text: str) -> Signal | None:
    """The LTE serving-cell line (other RATs have other layouts and give no RSRP)."""
    f = split_fields(text)
    if len(f) < 17 or f[0] != "servingcell" or f[2] != "LTE":
        return None
    rsrp, rsrq, rssi, sinr = (_value(x) for x in f[13:17])
    if rsrp is None and rsrq is None:
        return None
    return Signal(rssi_dbm=rssi, rsrp=rsrp, rsrq=rsrq, sinr=sinr)


def parse_qcsq(text: str) -> Signal | None:
    f = split_fields(text)
    if len(f) < 5 or f[0] not in ("LTE", "CAT-M", "eMTC", "CAT-NB", "NBIoT"):
        return None
    rssi, rsrp, sinr_raw, rsrq = (_value(x) for x in f[1:5])
    sinr = round(sinr_raw / 5.0 - 20.0, 1) if sinr_raw is not None else None
    return Signal(rssi_dbm=rssi, rsrp=rsrp, rsrq=rsrq, sinr=sinr)


class Quectel(Vendor):
    name = "quectel"
    supports_gnss = True

    @classmethod
    def matches(cls, manufacturer: str, model: str) -> bool:
        return "QUECTEL" in manufacturer.upper()

    def iccid(self, at: AtSession) -> str | None:
        try:
            text = at.command("AT+QCCID").first("+QCCID:")
        except AtError:
            return super().iccid(at)
        return parse_iccid(text) if text else None

    def signal_details(self, at: AtSession) -> Signal | None:
        try:
            for line in at.command('AT+QENG="servingcell"').all("+QENG:"):
                found = parse_qeng_servingcell(line)
                if found is not None:
                    return found
        except AtError:
            pass
        try:
            text = at.command("AT+QCSQ").first("+QCSQ:")
        except AtError:
            return super().signal_details(at)
        return parse_qcsq(text) if text else None

    def gnss_enable(self, at: AtSession) -> bool:
        """NMEA to the USB NMEA port, then start the engine; 504 means it is already running."""
        try:
            at.command('AT+QGPSCFG="outport","usbnmea"')
        except AtError:
            pass  # older firmware has no outport setting; NMEA goes to the NMEA port anyway
        try:
            at.command("AT+QGPS=1")
        except AtError as exc:
            if exc.code != 504:
                raise
        return True

    def gnss_enabled(self, at: AtSession) -> bool | None:
        try:
            text = at.command("AT+QGPS?").first("+QGPS:")
        except AtError:
            return None
        return text is not None and text.strip().startswith("1")
