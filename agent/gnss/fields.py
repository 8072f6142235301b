"""NMEA field parsers: text in, a value or None (unknown) out, never an exception.

A checksum proves only that the bytes arrived as sent. Numbers here are plain decimals (no
exponents, no `nan`/`inf`, no `1_0` or padding, all of which Python's float() and int() accept)
within ranges a receiver can report; anything else is unknown, and the fix tracker counts it.
"""

from __future__ import annotations

import calendar
import math
import re

_DECIMAL = re.compile(r"[+-]?(?:\d{1,12}(?:\.\d{0,12})?|\.\d{1,12})")
_INTEGER = re.compile(r"[+-]?\d{1,9}")
_TIME = re.compile(r"(\d{6})(?:\.(\d{1,9}))?")

MAX_SATS = 255  # satellites used or in view (more than any receiver tracks)
MAX_KNOTS = 10_000.0  # speed over ground: beyond any vehicle a pole or a van carries
ALT_RANGE = (-1000.0, 100_000.0)  # metres above mean sea level: below the Dead Sea to a balloon


def decimal(text: str, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A decimal field within [low, high], else None (unknown)."""
    if not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if low <= value <= high else None


def integer(text: str, low: int = -(10**9), high: int = 10**9) -> int | None:
    """An integer field within [low, high], else None (unknown)."""
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def dop(text: str) -> float | None:
    value = decimal(text, 0.0, 99.0)
    return value if value is not None and value < 99.0 else None  # 99.99 means "unknown"


def coordinate(value: str, hemisphere: str, limit: float) -> float | None:
    """ddmm.mmmm / dddmm.mmmm plus N/S/E/W to signed degrees; None when malformed."""
    if not value or hemisphere not in ("N", "S", "E", "W") or "." not in value or len(value) > 24:
        return None
    whole, _, frac = value.partition(".")
    if not whole.isascii() or not whole.isdigit() or (frac and not (frac.isascii() and frac.isdigit())):
        return None
    if not 3 <= len(whole) <= 5:
        return None
    degrees = int(whole[:-2])
    minutes = int(whole[-2:]) + (float("0." + frac) if frac else 0.0)
    if minutes >= 60:
        return None
    result = degrees + minutes / 60.0
    if result > limit:
        return None
    return -result if hemisphere in ("S", "W") else result


def lat_lon(f: tuple[str, ...], i: int) -> tuple[float, float] | None:
    lat = coordinate(f[i], f[i + 1], 90.0)
    lon = coordinate(f[i + 2], f[i + 3], 180.0)
    return None if lat is None or lon is None else (lat, lon)


def time_of_day(text: str) -> float | None:
    """hhmmss[.sss] to seconds of the day."""
    m = _TIME.fullmatch(text)
    if m is None:
        return None
    digits, fraction = m.groups()
    hh, mm, ss = int(digits[:2]), int(digits[2:4]), int(digits[4:6])
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return hh * 3600 + mm * 60 + ss + (float("0." + fraction) if fraction else 0.0)


def ddmmyy(text: str) -> tuple[int, int, int] | None:
    if len(text) != 6 or not text.isascii() or not text.isdigit():
        return None
    day, month, yy = int(text[:2]), int(text[2:4]), int(text[4:])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    year = 2000 + yy if yy < 80 else 1900 + yy  # GPS epoch is 1980; two-digit years wrap there
    return year, month, day


def epoch(date: tuple[int, int, int], seconds_of_day: float) -> float | None:
    year, month, day = date
    try:
        midnight = calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return midnight + seconds_of_day


