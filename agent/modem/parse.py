"""Parsers for 3GPP TS 27.007 answers: registration, operator, signal, SIM, PDP contexts.

Pure functions of one response line (without its `+XXX:` prefix) so they are unit-tested and
fuzzed without a modem. Anything malformed returns None rather than raising, and a field that is
well framed but makes no sense (a number that is not one, `nan`, a signal of +40 dBm, a 2 kB operator
name) is unknown rather than passed on: these values reach status, telemetry and every event.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

_INTEGER = re.compile(r"[+-]?\d{1,9}")
_HEX_INTEGER = re.compile(r"0[xX][0-9A-Fa-f]{1,8}")
_DECIMAL = re.compile(r"[+-]?(?:\d{1,9}(?:\.\d{0,9})?|\.\d{1,9})")
_HEX_ID = re.compile(r"[0-9A-Fa-f]{1,16}")  # LAC/TAC and cell ids, as the modem sends them
MAX_TEXT = 64  # operator names, identities, SIM states: longer is noise


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
    """A decimal (or 0x hex) integer field; anything else (`1_0`, `²`, 40 digits) is None."""
    if text is None:
        return None
    text = text.strip()
    if _HEX_INTEGER.fullmatch(text):
        return int(text, 16)
    return int(text) if _INTEGER.fullmatch(text) else None


def to_float(text: str | None) -> float | None:
    """A plain decimal field; `nan`, `inf` and exponents are None."""
    if text is None:
        return None
    text = text.strip()
    return float(text) if _DECIMAL.fullmatch(text) else None


def text_field(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """Free text from the modem (operator, identity): printable characters only, at most `limit`."""
    if text is None:
        return None
    cleaned = "".join(ch for ch in text if ch.isprintable()).strip()
    return cleaned[:limit] or None


def _hex_id(text: str | None) -> str | None:
    return text if text and _HEX_ID.fullmatch(text) else None


def _within(value: float | int | None, low: float, high: float) -> float | int | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) and low <= value <= high else None


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

    def __post_init__(self) -> None:  # a field that makes no sense is unknown
        object.__setattr__(self, "area", _hex_id(self.area))
        object.__setattr__(self, "cell", _hex_id(self.cell))
        object.__setattr__(self, "act", _within(self.act, 0, 255))

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", text_field(self.name))
        object.__setattr__(self, "act", _within(self.act, 0, 255))

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
# Plausible ranges (3GPP TS 36.133 reporting ranges, with margin for vendor offsets).
SIGNAL_RANGES: dict[str, tuple[float, float]] = {
    "rssi_dbm": (-150.0, 0.0),
    "csq": (0, 31),
    "ber": (0, 7),
    "rsrp": (-160.0, -20.0),
    "rsrq": (-50.0, 20.0),
    "sinr": (-30.0, 60.0),
}

@dataclass(frozen=True)
class Signal:
    rssi_dbm: float | None = None
    csq: int | None = None  # raw 0..31 (99 unknown), what every modem supports
    ber: int | None = None
    rsrp: float | None = None  # dBm
    rsrq: float | None = None  # dB
    sinr: float | None = None  # dB

    def __post_init__(self) -> None:
        """Values outside what a radio can report are unknown, never passed on (nan would not even be JSON)."""
        for f in fields(self):
            low, high = SIGNAL_RANGES[f.name]
            object.__setattr__(self, f.name, _within(getattr(self, f.name), low, high))

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
    """`+CPIN: READY` → READY; `SIM PIN`, `SIM PUK`, `NOT READY`, `NOT INSERTED`… as sent
    (UNKNOWN when it is not a short upper-case phrase)."""
    state = text.strip().upper()
    return state if re.fullmatch(r"[A-Z0-9][A-Z0-9 _-]{0,31}", state) else "UNKNOWN"


def parse_iccid(text: str) -> str | None:
    """+CCID / +QCCID / +ICCID answers: 19-20 digits (the last may be F)."""
    digits = "".join(ch for ch in text if ch.isascii() and ch.isalnum())
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
        contexts.append(PdpContext(cid=cid, pdp_type=text_field(f[1], 16) or "", apn=text_field(f[2], 100) or ""))
    return contexts
