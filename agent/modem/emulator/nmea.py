"""What the emulated receiver says: a fixed 3D fix, or a real NMEA log re-stamped to now."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from agent.gnss.nmea import NmeaFramer, build, strip_comments

_TIME_FIELD = {"GGA": 1, "RMC": 1, "GNS": 1, "ZDA": 1, "GLL": 5}  # sentence kind → index of hhmmss


def _nmea_coord(value: float, positive: str, negative: str, width: int) -> tuple[str, str]:
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    return f"{degrees:0{width}d}{minutes:09.6f}", hemisphere


def _stamp(utc: datetime) -> str:
    return utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"


def static_cycle(lat: float, lon: float, alt: float, utc: datetime) -> list[str]:
    """One 3D-fix reporting cycle at a fixed position, stamped `utc`."""
    t = _stamp(utc)
    d = utc.strftime("%d%m%y")
    la, ns = _nmea_coord(lat, "N", "S", 2)
    lo, ew = _nmea_coord(lon, "E", "W", 3)
    return [
        build(f"GPGGA,{t},{la},{ns},{lo},{ew},1,08,0.9,{alt:.1f},M,47.0,M,,"),
        build("GPGSA,A,3,02,05,12,15,18,24,25,29,,,,,1.6,0.9,1.3"),
        build(f"GPRMC,{t},A,{la},{ns},{lo},{ew},0.0,,{d},,,A"),
        build("GPVTG,,T,,M,0.0,N,0.0,K,A"),
        build("GPGSV,2,1,08,02,40,083,41,05,17,308,38,12,07,344,30,15,62,228,44"),
        build("GPGSV,2,2,08,18,33,054,40,24,51,140,43,25,22,270,35,29,70,010,45"),
    ]


def load_route(path: Path, limit: int = 20000) -> list[list[str]]:
    """An NMEA log split into reporting cycles (a new time of day starts a cycle)."""
    framer = NmeaFramer()
    sentences = framer.feed(strip_comments(path.read_bytes()))
    cycles: list[list[str]] = []
    current: list[str] = []
    current_time: str | None = None
    for s in sentences:
        stamp = _sentence_time(s.kind, s.fields)
        if stamp and stamp != current_time and current:
            cycles.append(current)
            current = []
        if stamp:
            current_time = stamp
        current.append(s.raw)
        if len(cycles) >= limit:
            break
    if current:
        cycles.append(current)
    if not cycles:
        raise ValueError(f"{path}: no NMEA sentences with valid checksums")
    return cycles


def _sentence_time(kind: str, f: tuple[str, ...]) -> str | None:
    index = _TIME_FIELD.get(kind)
    if index is None or len(f) <= index:
        return None
    return f[index][:6] or None


def restamp(raw: str, utc: datetime) -> str:
    """Move a sentence to `utc` (time of day and date fields), with a fresh checksum."""
    body = raw[1 : raw.rindex("*")]
    f = body.split(",")
    kind = f[0][2:] if not f[0].startswith("P") else ""
    index = _TIME_FIELD.get(kind)
    if index is not None and len(f) > index and f[index]:
        f[index] = _stamp(utc)
    if kind == "RMC" and len(f) > 9 and f[9]:
        f[9] = utc.strftime("%d%m%y")
    if kind == "ZDA" and len(f) > 4 and f[2]:
        f[2], f[3], f[4] = utc.strftime("%d"), utc.strftime("%m"), utc.strftime("%Y")
    return build(",".join(f))
