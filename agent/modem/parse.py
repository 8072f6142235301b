"""Parsers for 3GPP TS 27.007 answers: registration, operator, signal, SIM, PDP contexts.

Pure functions of one response line (without its `+XXX:` prefix) so they are unit-tested and
fuzzed without a modem. Anything malformed returns None rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass


def split_fields(text: str) -> list[str]:
    """Split on commas outside double quotes; strip spaces and the quotes themselves."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            fields.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    fields.append("".join(current).strip())
    return fields


def to_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return None
    try:
        return int(text)
    except ValueError:
        return None


def to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


# -- registration (+CREG / +CGREG / +CEREG / +C5GREG) -----------------------------------------------
# <stat> values of 27.007 §7.2/§10.1.22; two-digit ones (9, 10, 11) exist on newer modems.
REG_STATES = {
    0: "not_registered",
    1: "home",
    2: "searching",
    3: "denied",
    4: "unknown",
    5: "roaming",
    6: "home",  # SMS only
    7: "roaming",  # SMS only
    8: "emergency_only",
    9: "home",  # CSFB not preferred
    10: "roaming",  # CSFB not preferred
    11: "emergency_only",  # attached for RLOS access only
}
REGISTERED = frozenset({"home", "roaming"})

# <AcT> values of 27.007 §7.3 (with the LTE-M/NB-IoT use Quectel and SIMCom make of 8 and 9).
ACCESS_TECH = {
    0: "GSM",
    1: "GSM",
    2: "UMTS",
    3: "EDGE",
    4: "HSDPA",
    5: "HSUPA",
    6: "HSPA",
    7: "LTE",
    8: "LTE-M",
    9: "NB-IoT",
    10: "LTE",  # E-UTRA connected to 5GCN
    11: "NR",
    12: "NR",
    13: "LTE+NR",
}


@dataclass(frozen=True)
class Registration:
    stat: int
    area: str | None = None  # LAC/TAC, hex as sent
    cell: str | None = None  # cell id, hex as sent
    act: int | None = None

    @property
    def state(self) -> str:
        return REG_STATES.get(self.stat, "unknown")

    @property
    def registered(self) -> bool:
        return self.state in REGISTERED

    @property
    def technology(self) -> str | None:
        return ACCESS_TECH.get(self.act) if self.act is not None else None


def parse_registration(text: str, *, solicited: bool) -> Registration | None:
    """`+CEREG: <n>,<stat>[,<tac>,<ci>[,<AcT>]]` (solicited) or `+CEREG: <stat>[,<tac>,<ci>[,<AcT>]]`."""
    f = split_fields(text)
    if solicited:
        if len(f) < 2:
            return None
        f = f[1:]
    stat = to_int(f[0]) if f else None
    if stat is None or stat < 0 or stat > 255:
        return None
    area = (f[1] or None) if len(f) > 1 else None
    cell = (f[2] or None) if len(f) > 2 else None
    act = to_int(f[3]) if len(f) > 3 else None
    return Registration(stat=stat, area=area, cell=cell, act=act)


# -- operator (+COPS?) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operator:
    mode: int
    name: str | None = None
    act: int | None = None

    @property
    def technology(self) -> str | None:
        return ACCESS_TECH.get(self.act) if self.act is not None else None


def parse_cops(text: str) -> Operator | None:
    """`+COPS: <mode>[,<format>,<oper>[,<AcT>]]`."""
    f = split_fields(text)
    mode = to_int(f[0]) if f else None
    if mode is None:
        return None
    name = (f[2] or None) if len(f) > 2 else None
    act = to_int(f[3]) if len(f) > 3 else None
    return Operator(mode=mode, name=name, act=act)


# -- signal -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signal:
    rssi_dbm: float | None = None
    csq: int | None = None  # raw 0..31 (99 unknown), what every modem supports
    ber: int | None = None
    rsrp: float | None = None  # dBm
    rsrq: float | None = None  # dB
    sinr: float | None = None  # dB

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "csq": self.csq,
            "rssi_dbm": self.rssi_dbm,
            "rsrp_dbm": self.rsrp,
            "rsrq_db": self.rsrq,
            "sinr_db": self.sinr,
        }


def parse_csq(text: str) -> Signal | None:
    """`+CSQ: <rssi>,<ber>`: 0 = -113 dBm … 31 = -51 dBm or more, 99 = unknown."""
    f = split_fields(text)
    rssi = to_int(f[0]) if f else None
    if rssi is None:
        return None
    ber = to_int(f[1]) if len(f) > 1 else None
    dbm = -113.0 + 2 * rssi if 0 <= rssi <= 31 else None
    return Signal(rssi_dbm=dbm, csq=rssi if rssi != 99 else None, ber=ber if ber != 99 else None)


# -- SIM --------------------------------------------------------------------------------------------
def parse_cpin(text: str) -> str:
    """`+CPIN: READY` → READY; `SIM PIN`, `SIM PUK`, `NOT READY`, `NOT INSERTED`… as sent."""
    return text.strip().upper()


def parse_iccid(text: str) -> str | None:
    """+CCID / +QCCID / +ICCID answers: 19-20 digits (the last may be F)."""
    digits = "".join(ch for ch in text if ch.isalnum())
    return digits if 18 <= len(digits) <= 22 else None


# -- PDP contexts (+CGDCONT?) ----------------------------------------------------------------------
@dataclass(frozen=True)
class PdpContext:
    cid: int
    pdp_type: str
    apn: str


def parse_cgdcont(lines: list[str]) -> list[PdpContext]:
    contexts = []
    for text in lines:
        f = split_fields(text)
        cid = to_int(f[0]) if f else None
        if cid is None or len(f) < 3:
            continue
        contexts.append(PdpContext(cid=cid, pdp_type=f[1], apn=f[2]))
    return contexts
