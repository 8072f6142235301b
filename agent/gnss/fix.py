"""Fix state from NMEA sentences, merged per reporting cycle the way gpsd does it.

A receiver reports one epoch as a burst of sentences (GGA, RMC, GSA, GSV, VTG, GLL, ZDA, GNS, in a
receiver-specific order); no single sentence has everything. The tracker merges a burst into one
`Fix` and hands it over when the burst is complete: when a sentence with a newer timestamp starts
the next cycle, when the reader sees the line go quiet (`end_cycle`), or at the end of a log.

The merge rules follow gpsd's NMEA driver, because its decoded output is our reference: the mode
comes from GGA (position + altitude + ≥4 satellites = 3D), RMC/GLL (position = at least 2D) and GSA
(the receiver's own 1/2/3), and a 3D fix is not downgraded by a sentence that cannot tell 2D from
3D. Void sentences (RMC/GLL status V, GGA quality 0, GNS mode N) mean no fix. Dates come only from
RMC and ZDA; until one arrives the fix has no time (GGA alone carries no date). The per-sentence
rules stay in this one module, side by side, because they are only right together (each one reads
what the others of the same cycle left); that is why it is a little over 500 lines.

A checksum only proves the bytes arrived as sent, not that they make sense: every field is parsed
strictly (plain decimal numbers, ranges a receiver can report) and a field that fails is unknown,
never an exception. A sentence whose parser still fails in an unforeseen way is skipped whole, the
state restored to what it was before it, and counted as `unexpected` (a bug to report), so one bad
sentence never stops GNSS.
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

from agent.gnss.fields import (
    ALT_RANGE,
    MAX_KNOTS,
    MAX_SATS,
    ddmmyy,
    decimal,
    dop,
    epoch,
    integer,
    lat_lon,
    time_of_day,
)
from agent.gnss.nmea import Sentence

log = logging.getLogger(__name__)
_Number = TypeVar("_Number", int, float)

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
    malformed: int = 0  # right type, wrong shape (too few fields, bad numbers): skipped or partly unknown
    unexpected: int = 0  # subset of malformed: a parser failed in a way nobody foresaw (a bug; logged)
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
    _bad_fields: int = 0  # fields a handler found present but unreadable (counted per sentence)

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
        saved = self._save()
        bad_fields = self._bad_fields
        try:
            handler(self, f, mono, done)
        except Exception:  # the last resort: skip the sentence whole, as if it never came
            self._restore(saved)
            done.clear()
            self.stats.malformed += 1
            self.stats.unexpected += 1
            if self.stats.unexpected <= 10 or self.stats.unexpected % 1000 == 0:
                log.warning("GNSS: skipped a sentence the parser could not handle (%d so far): %s",
                            self.stats.unexpected, sentence.raw[:120], exc_info=True)
        else:
            if self._bad_fields > bad_fields:
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
    def _save(self) -> tuple[dict[str, object], _Cycle, int, Fix | None]:
        """Everything a handler may change (the sentence counters aside), to undo a failed sentence."""
        state = {k: v for k, v in vars(self).items() if k not in ("stats", "_cur", "last")}
        return state, replace(self._cur), self.stats.cycles, self.last

    def _restore(self, saved: tuple[dict[str, object], _Cycle, int, Fix | None]) -> None:
        state, cur, cycles, last = saved
        vars(self).update(state)
        self._cur, self.stats.cycles, self.last = cur, cycles, last

    def _field(self, parsed: _Number | None, text: str) -> _Number | None:
        """`parsed` from `text`; a non-empty field that did not parse is noted as a bad field."""
        if parsed is None and text:
            self._bad_fields += 1
        return parsed

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
            timestamp = epoch(self._date, cur.tod)
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
        tod = time_of_day(raw)
        if tod is None:
            self._field(None, raw)
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
        quality = self._field(integer(f[6], 0, 9), f[6])
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
        """Satellites used and HDOP, where GGA and GNS both carry them (fields 7 and 8). An unreadable
        count is unknown, and counts as none for the fix mode (as gpsd's atoi makes it)."""
        sats = self._field(integer(f[7], 0, MAX_SATS), f[7])
        if sats is not None:
            self._cur.gga_sats = int(sats)
        hdop = dop(f[8])
        self._field(decimal(f[8], 0.0, 100.0), f[8])  # 99.99 is the receiver's "unknown", not a bad field
        if hdop is not None:
            self._cur.hdop = hdop
        return int(sats) if sats is not None else 0

    def _lat_lon(self, f: tuple[str, ...], i: int) -> tuple[float, float] | None:
        position = lat_lon(f, i)
        if position is None and all(f[i : i + 4]):
            self._bad_fields += 1  # all four present, yet no position: out of range or not numbers
        return position

    def _position(self, f: tuple[str, ...], sats: int) -> int | None:
        """Position and altitude of a GGA or GNS (fields 2-5 and 9): the fix mode they give, or None."""
        position = self._lat_lon(f, 2)
        if position is None:
            return None
        cur = self._cur
        cur.lat, cur.lon = position
        alt = self._field(decimal(f[9], *ALT_RANGE), f[9])
        if alt is None:
            return MODE_2D
        cur.alt_msl = float(alt)
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
        date = ddmmyy(f[9]) if len(f) > 9 else None
        if date is None and len(f) > 9:
            self._field(None, f[9])
        tod = time_of_day(f[1])
        if date is not None and tod is not None:
            self._timestamp(f[1], mono, done, timed=False)
            self._set_date(date, tod)
        elif tod is None:
            self._field(None, f[1])
        cur = self._cur
        cur.content = True
        position = self._lat_lon(f, 3)
        if position is None:
            cur.mode = MODE_NO_FIX
            return
        cur.lat, cur.lon = position
        speed = self._field(decimal(f[7], 0.0, MAX_KNOTS), f[7])
        if speed is not None:
            cur.speed = speed * KNOTS_TO_MPS
        track = self._field(decimal(f[8], 0.0, 360.0), f[8]) if len(f) > 8 else None
        if track is not None:
            cur.track = float(track)
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
        position = self._lat_lon(f, 1) if valid else None
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
                value = dop(f[idx])
                self._field(decimal(f[idx], 0.0, 100.0), f[idx])
                if value is not None:
                    setattr(cur, attr, value)
        used = sum(1 for x in f[3:15] if (prn := integer(x, 1, 999)) is not None and prn > 0)
        accumulate = self._last_gsa_talker != "" and (
            self._last_gsa_talker != talker or talker == "GN"
        )
        self._sats_used = min(MAX_SATS, self._sats_used + used if accumulate else used)
        self._last_gsa_talker = talker
        cur.gsa_sats = self._sats_used
        mode = self._field(integer(f[2], 1, 3), f[2])
        if mode in (MODE_NO_FIX, MODE_2D, MODE_3D) and talker in _GNSS_TALKERS:
            if mode == MODE_NO_FIX:
                cur.mode = MODE_NO_FIX
            else:
                self._set_mode(int(mode))

    def _vtg(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        if len(f) < 6 or not f[1] or not f[5]:
            return
        if len(f) > 9 and f[9][:1] in ("N", "E"):
            return
        cur = self._cur
        track = self._field(decimal(f[1], 0.0, 360.0), f[1])
        speed = self._field(decimal(f[5], 0.0, MAX_KNOTS), f[5])
        if track is not None:
            cur.track = float(track)
        if speed is not None:
            cur.speed = speed * KNOTS_TO_MPS

    def _zda(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        if len(f) < 5:  # time, day, month, year: a shorter one cannot date anything
            self._bad_fields += 1
            return
        day, month, year = integer(f[2], 1, 31), integer(f[3], 1, 12), integer(f[4], 1980, 2200)
        tod = time_of_day(f[1])
        if tod is None or day is None or month is None or year is None:
            self._bad_fields += any(f[1:5])  # a ZDA with something in it, but not a date and time
            return
        self._timestamp(f[1], mono, done, timed=False)
        self._set_date((int(year), int(month), int(day)), tod)

    def _gsv(self, f: tuple[str, ...], mono: float, done: list[Fix]) -> None:
        total = self._field(integer(f[3], 0, MAX_SATS), f[3])
        if total is not None:
            self._cur.sats_visible = int(total)

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
