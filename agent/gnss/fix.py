"""Fix state from NMEA sentences, merged per reporting cycle the way gpsd does it.

A receiver reports one epoch as a burst of sentences (GGA, RMC, GSA, GSV, VTG, GLL, ZDA, GNS, in a
receiver-specific order); no single sentence has everything. The tracker merges a burst into one
`Fix` and hands it over when the burst is complete: when a sentence with a newer timestamp starts
the next cycle, when the reader sees the line go quiet (`end_cycle`), or at the end of a log.

The merge rules follow gpsd's NMEA driver, because its decoded output is our reference: the mode
comes from GGA (position + altitude + ≥4 satellites = 3D), RMC/GLL (position = at least 2D) and GSA
(the receiver's own 1/2/3), and a 3D fix is not downgraded by a sentence that cannot tell 2D from
3D. Void sentences (RMC/GLL status V, GGA quality 0, GNS mode N) mean no fix. Dates come only from
RMC and ZDA; until one arrives the fix has no time (GGA alone carries no date).
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.gnss.nmea import Sentence

KNOTS_TO_MPS = 0.514444
GPS_ROLLOVER_S = 1024 * 7 * 86400  # GPS week numbers wrap every 1024 weeks (1999, 2019, 2038)

MODE_NOT_SEEN, MODE_NO_FIX, MODE_2D, MODE_3D = 0, 1, 2, 3

# Minimum field counts (tag included) below which gpsd ignores a sentence as too short.
_MIN_FIELDS = {"GGA": 13, "RMC": 8, "GSA": 18, "GLL": 7, "GNS": 13, "VTG": 5, "ZDA": 4, "GSV": 4}
# Talkers whose GSA add to the satellites used in the same cycle (multi-constellation receivers).
_GNSS_TALKERS = {"GP", "GN", "GL", "GA", "GB", "BD", "GQ", "QZ", "GI"}


@dataclass(frozen=True)
class Fix:
    """One reporting cycle. `mode`: 1 no fix, 2 2D, 3 3D. Position is None without a fix."""

    mode: int
    time: float | None = None  # UTC epoch seconds of the fix
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None
    quality: int | None = None  # GGA fix quality: 0 invalid, 1 GPS, 2 DGPS, 4/5 RTK, 6 DR…
    sats_used: int | None = None
    sats_visible: int | None = None
    hdop: float | None = None
    pdop: float | None = None
    vdop: float | None = None
    speed: float | None = None  # m/s over ground
    track: float | None = None  # degrees true
    mono: float = 0.0  # monotonic instant the cycle's first sentence arrived (fix age, clock)

    @property
    def has_position(self) -> bool:
        return self.mode >= MODE_2D and self.lat is not None and self.lon is not None

    def time_iso(self) -> str | None:
        if self.time is None:
            return None
        stamp = datetime.fromtimestamp(self.time, tz=UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def as_dict(self) -> dict[str, object]:
        """The replay/telemetry shape: time, lat, lon, mode, sats_used, hdop, speed, track (+ extras)."""
        return {
            "time": self.time_iso(),
            "lat": _round(self.lat, 9),
            "lon": _round(self.lon, 9),
            "mode": self.mode,
            "sats_used": self.sats_used,
            "hdop": self.hdop,
            "speed": _round(self.speed, 3),
            "track": self.track,
            "alt": self.alt_msl,
            "quality": self.quality,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _float(text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _dop(text: str) -> float | None:
    value = _float(text)
    return value if value is not None and 0 <= value < 99.0 else None  # 99.99 means "unknown"


def _coordinate(value: str, hemisphere: str, limit: float) -> float | None:
    """ddmm.mmmm / dddmm.mmmm plus N/S/E/W to signed degrees; None when malformed."""
    if not value or hemisphere not in ("N", "S", "E", "W") or "." not in value:
        return None
    whole, _, frac = value.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(whole) < 3:
        return None
    degrees = int(whole[:-2])
    minutes = int(whole[-2:]) + (float("0." + frac) if frac else 0.0)
    if minutes >= 60:
        return None
    result = degrees + minutes / 60.0
    if result > limit:
        return None
    return -result if hemisphere in ("S", "W") else result


def _lat_lon(f: tuple[str, ...], i: int) -> tuple[float, float] | None:
    lat = _coordinate(f[i], f[i + 1], 90.0)
    lon = _coordinate(f[i + 2], f[i + 3], 180.0)
    return None if lat is None or lon is None else (lat, lon)


def _time_of_day(text: str) -> float | None:
    """hhmmss[.sss] to seconds of the day."""
    if len(text) < 6 or not text[:6].isdigit():
        return None
    hh, mm, ss = int(text[:2]), int(text[2:4]), int(text[4:6])
    if hh > 23 or mm > 59 or ss > 60:
        return None
    frac = 0.0
    if len(text) > 7 and text[6] == "." and text[7:].isdigit():
        frac = float("0." + text[7:])
    return hh * 3600 + mm * 60 + ss + frac


def _ddmmyy(text: str) -> tuple[int, int, int] | None:
    if len(text) != 6 or not text.isdigit():
        return None
    day, month, yy = int(text[:2]), int(text[2:4]), int(text[4:])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    year = 2000 + yy if yy < 80 else 1900 + yy  # GPS epoch is 1980; two-digit years wrap there
    return year, month, day


def _epoch(date: tuple[int, int, int], seconds_of_day: float) -> float | None:
    year, month, day = date
    try:
        midnight = calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return midnight + seconds_of_day


@dataclass
class _Cycle:
    """The merged state of the reporting cycle being received."""

    tod: float | None = None
    mode: int = MODE_NOT_SEEN
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None
    quality: int | None = None
    gga_sats: int | None = None
    gsa_sats: int | None = None
    sats_visible: int | None = None
    hdop: float | None = None
    pdop: float | None = None
    vdop: float | None = None
    speed: float | None = None
    track: float | None = None
    timed: bool = False  # a sentence gave this cycle a date-resolved time
    content: bool = False  # anything fix-related arrived
    first_mono: float | None = None


@dataclass
class TrackerStats:
    sentences: int = 0  # sentences offered (framer-accepted)
    used: int = 0  # sentences that changed the fix state
    ignored: int = 0  # proprietary, unknown or unsupported types
    malformed: int = 0  # right type, wrong shape (too few fields, bad numbers)
    cycles: int = 0  # fixes handed over

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class FixTracker:
    """Feed it sentences in order; `feed` returns the previous cycle's `Fix` when a new one begins."""

    stats: TrackerStats = field(default_factory=TrackerStats)
    last: Fix | None = None  # the latest completed cycle
    _cur: _Cycle = field(default_factory=_Cycle)
    _date: tuple[int, int, int] | None = None
    _date_tod: float | None = None  # time of day when the date was learned (midnight rollover)
    _prev_mode: int = MODE_NOT_SEEN  # mode of the last completed, timed cycle
    _alt_known: bool = False  # an altitude was seen in this or a recent cycle
    _sats_used: int = 0  # latest GSA count, kept across cycles like gpsd does
    _last_gsa_talker: str = ""
    _last_gga: tuple[str, str] = ("", "")  # (talker, raw time) of the last GGA

    # -- public -------------------------------------------------------------------------------------
    def feed(self, sentence: Sentence, mono: float = 0.0) -> Fix | None:
        """Merge one sentence. Returns a completed Fix when this sentence starts a new cycle."""
        self.stats.sentences += 1
        kind = sentence.kind
        handler = _HANDLERS.get(kind)
        if handler is None or sentence.proprietary:
            self.stats.ignored += 1
            self._after(kind)
            return None
        f = sentence.fields
        if len(f) < _MIN_FIELDS.get(kind, 1):
            self.stats.malformed += 1
            self._after(kind)
            return None
        done: list[Fix] = []
        try:
            handler(self, f, mono, done)
        except (ValueError, IndexError):  # a field that looks numeric but is not: ignore the sentence
            self.stats.malformed += 1
        else:
            self.stats.used += 1
        self._after(kind)
        if self._cur.content and self._cur.first_mono is None:
            self._cur.first_mono = mono
        return done[0] if done else None

    @property
    def in_cycle(self) -> bool:
        """Sentences of a cycle not yet handed over have arrived."""
        return self._cur.content

    def end_cycle(self, mono: float = 0.0) -> Fix | None:
        """The line went quiet or the input ended: hand over the cycle being received, if any."""
        return self._close(mono)

    # -- cycle bookkeeping --------------------------------------------------------------------------
    def _after(self, kind: str) -> None:
        if kind != "GSA":
            self._last_gsa_talker = ""

    def _close(self, mono: float) -> Fix | None:
        cur = self._cur
        self._cur = _Cycle()
        if not cur.content or cur.mode == MODE_NOT_SEEN:
            if cur.content:
                self._carry(cur)
            return None
        has_fix = cur.mode >= MODE_2D and cur.lat is not None and cur.lon is not None
        mode = cur.mode if has_fix or cur.mode < MODE_2D else MODE_NO_FIX
        timestamp = None
        if cur.timed and cur.tod is not None and self._date is not None:
            timestamp = _epoch(self._date, cur.tod)
        sats_used = cur.gsa_sats if cur.gsa_sats is not None else cur.gga_sats
        fix = Fix(
            mode=mode,
            time=timestamp,
            lat=cur.lat if has_fix else None,
            lon=cur.lon if has_fix else None,
            alt_msl=cur.alt_msl if has_fix else None,
            quality=cur.quality,
            sats_used=sats_used,
            sats_visible=cur.sats_visible,
            hdop=cur.hdop,
            pdop=cur.pdop,
            vdop=cur.vdop,
            speed=cur.speed if has_fix else None,
            track=cur.track if has_fix else None,
            mono=cur.first_mono if cur.first_mono is not None else mono,
        )
        if timestamp is not None:
            self._prev_mode = mode
        self._alt_known = cur.alt_msl is not None or (self._alt_known and mode == MODE_3D)
        self.last = fix
        self.stats.cycles += 1
        return fix

    def _carry(self, cur: _Cycle) -> None:
        """Satellite-only bursts (GSV, GSA before the first timed sentence) feed the next cycle."""
        self._cur.sats_visible = cur.sats_visible
        self._cur.gsa_sats = cur.gsa_sats
        self._cur.hdop, self._cur.pdop, self._cur.vdop = cur.hdop, cur.pdop, cur.vdop

    def _timestamp(self, raw: str, mono: float, done: list[Fix], *, timed: bool) -> None:
        """A sentence with a time of day: a new time starts a new cycle (the old one is complete)."""
        tod = _time_of_day(raw)
        if tod is None:
            return
        cur = self._cur
        if cur.tod is not None and abs(tod - cur.tod) < 0.01:
            cur.timed = cur.timed or (timed and self._date is not None)
            return
        if cur.tod is not None or cur.mode != MODE_NOT_SEEN:
            fix = self._close(mono)
            if fix is not None:
                done.append(fix)
            elif cur.tod is None:
                self._carry(cur)
        if self._date is not None and self._date_tod is not None and tod + 43200 < self._date_tod:
            self._roll_date()
        self._cur.tod = tod
        self._cur.timed = timed and self._date is not None

    def _roll_date(self) -> None:
        """Midnight passed since the date was learned: GGA/GLL times belong to the next day."""
        if self._date is None:
            return
        year, month, day = self._date
        stamp = calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0)) + 86400
        d = datetime.fromtimestamp(stamp, tz=UTC)
        self._date = (d.year, d.month, d.day)
        self._date_tod = 0.0

    def _set_date(self, date: tuple[int, int, int], tod: float | None) -> None:
        self._date = date
        self._date_tod = tod
        if tod is not None and self._cur.tod is not None and abs(tod - self._cur.tod) < 0.01:
            self._cur.timed = True

    def _set_mode(self, mode: int) -> None:
        """gpsd: a 3D fix is not downgraded to 2D by a sentence that cannot see altitude."""
        cur = self._cur
        if mode != MODE_NO_FIX and cur.mode == MODE_3D and self._alt_known:
            return
        cur.mode = mode

    # -- sentences ----------------------------------------------------------------------------------
    def _gga(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        talker = f[0][:2]
        quality = _int(f[6]) if f[6] else None
        if quality == 0 and not f[1]:
            # Quectel reports loss of fix as an empty GGA without a time: end the cycle now.
            self._no_time_report(mono, done)
            self._cur.quality = 0
            return
        stuck = self._last_gga[0] == talker and self._last_gga[1] == f[1] and bool(f[1])
        self._last_gga = (talker, f[1])
        if f[1] and not stuck:
            self._timestamp(f[1], mono, done, timed=True)
        cur = self._cur
        cur.content = True
        cur.quality = quality
        sats = self._sats_and_hdop(f)
        if stuck:  # a receiver repeating its last GGA has lost lock (gpsd's "latch mode")
            self._set_mode(MODE_NO_FIX)
            return
        mode = self._position(f, sats) if quality else None
        if mode is None:
            cur.mode = MODE_NO_FIX
            return
        self._set_mode(MODE_NO_FIX if sats < 3 else mode)

    def _sats_and_hdop(self, f: tuple[str, ...]) -> int:
        """Satellites used and HDOP, where GGA and GNS both carry them (fields 7 and 8)."""
        sats = _int(f[7]) if f[7] else 0
        self._cur.gga_sats = sats if f[7] else self._cur.gga_sats
        hdop = _dop(f[8])
        if hdop is not None:
            self._cur.hdop = hdop
        return sats

    def _position(self, f: tuple[str, ...], sats: int) -> int | None:
        """Position and altitude of a GGA or GNS (fields 2-5 and 9): the fix mode they give, or None."""
        position = _lat_lon(f, 2)
        if position is None:
            return None
        cur = self._cur
        cur.lat, cur.lon = position
        alt = _float(f[9])
        if alt is None:
            return MODE_2D
        cur.alt_msl = alt
        self._alt_known = True
        return MODE_3D if sats >= 4 else MODE_2D

    def _rmc(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        status = f[2][:1]
        cur = self._cur
        if status not in ("A", "D"):
            if not f[1] or len(f) < 10 or not f[9]:
                self._no_time_report(mono, done)
            self._cur.content = True
            self._cur.mode = MODE_NO_FIX
            return
        date = _ddmmyy(f[9]) if len(f) > 9 else None
        tod = _time_of_day(f[1])
        if date is not None and tod is not None:
            self._timestamp(f[1], mono, done, timed=False)
            self._set_date(date, tod)
        cur = self._cur
        cur.content = True
        position = _lat_lon(f, 3)
        if position is None:
            cur.mode = MODE_NO_FIX
            return
        cur.lat, cur.lon = position
        speed = _float(f[7])
        if speed is not None:
            cur.speed = speed * KNOTS_TO_MPS
        track = _float(f[8])
        if track is not None:
            cur.track = track
        mode = MODE_3D if self._prev_mode == MODE_3D else MODE_2D
        if self._sats_used > 3 or cur.alt_msl is not None:
            mode = MODE_3D
        self._set_mode(mode)

    def _gll(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        if f[5]:
            self._timestamp(f[5], mono, done, timed=True)
        cur = self._cur
        cur.content = True
        valid = f[6][:1] == "A" and (len(f) < 8 or f[7][:1] != "N")
        position = _lat_lon(f, 1) if valid else None
        if position is None:
            cur.mode = MODE_NO_FIX
            return
        cur.lat, cur.lon = position
        if cur.alt_msl is not None or self._sats_used > 3:
            mode = MODE_3D
        elif cur.mode < MODE_2D or not self._alt_known:
            mode = MODE_2D
        else:
            mode = cur.mode
        self._set_mode(mode)

    def _gns(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        if f[1]:
            self._timestamp(f[1], mono, done, timed=True)
        cur = self._cur
        cur.content = True
        if not f[6] or f[6][0] == "N":
            cur.mode = MODE_NO_FIX
            return
        if len(f) > 13 and f[13][:1] in ("U", "V"):
            return
        mode = self._position(f, self._sats_and_hdop(f))
        if mode is None:
            cur.mode = MODE_NO_FIX
            return
        self._set_mode(mode)

    def _gsa(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        cur = self._cur
        cur.content = True
        talker = f[0][:2]
        if len(f) <= 19:  # longer ones (24-channel receivers) carry unreliable DOPs
            for attr, idx in (("pdop", 15), ("hdop", 16), ("vdop", 17)):
                dop = _dop(f[idx])
                if dop is not None:
                    setattr(cur, attr, dop)
        used = sum(1 for x in f[3:15] if x.isdigit() and int(x) > 0)
        accumulate = self._last_gsa_talker != "" and (
            self._last_gsa_talker != talker or talker == "GN"
        )
        self._sats_used = self._sats_used + used if accumulate else used
        self._last_gsa_talker = talker
        cur.gsa_sats = self._sats_used
        mode = _int(f[2]) if f[2] else None
        if mode in (MODE_NO_FIX, MODE_2D, MODE_3D) and talker in _GNSS_TALKERS:
            if mode == MODE_NO_FIX:
                cur.mode = MODE_NO_FIX
            else:
                self._set_mode(mode)

    def _vtg(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        if not f[1] or not f[5]:
            return
        if len(f) > 9 and f[9][:1] in ("N", "E"):
            return
        cur = self._cur
        track, speed = _float(f[1]), _float(f[5])
        if track is not None:
            cur.track = track
        if speed is not None:
            cur.speed = speed * KNOTS_TO_MPS

    def _zda(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        day, month, year = _int(f[2]), _int(f[3]), _int(f[4])
        tod = _time_of_day(f[1])
        if tod is None or day is None or month is None or year is None:
            return
        if not (1 <= month <= 12 and 1 <= day <= 31 and 1980 <= year <= 2200):
            return
        self._timestamp(f[1], mono, done, timed=False)
        self._set_date((year, month, day), tod)

    def _gsv(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        total = _int(f[3]) if f[3] else None
        if total is not None and total >= 0:
            self._cur.sats_visible = total

    def _no_time_report(self, mono: float, done: list[Fix]) -> None:
        """A void sentence without a time (Quectel: `$GPRMC,,V,…`): close the cycle, report no fix.
        Several in a row (empty GGA, then empty RMC) are one no-fix cycle."""
        cur = self._cur
        if cur.tod is None and cur.mode == MODE_NO_FIX and cur.content:
            return
        fix = self._close(mono)
        if fix is not None:
            done.append(fix)
        self._cur.content = True
        self._cur.mode = MODE_NO_FIX


_HANDLERS = {
    "GGA": FixTracker._gga,
    "RMC": FixTracker._rmc,
    "GLL": FixTracker._gll,
    "GNS": FixTracker._gns,
    "GSA": FixTracker._gsa,
    "VTG": FixTracker._vtg,
    "ZDA": FixTracker._zda,
    "GSV": FixTracker._gsv,
}


def correct_rollover(epoch: float, not_before: float) -> float:
    """Undo GPS week-number rollover: receivers with old firmware report dates 1024 weeks early
    (gpsd does the same against its build date). `not_before`: a date the true time cannot precede."""
    while epoch < not_before:
        epoch += GPS_ROLLOVER_S
    return epoch
