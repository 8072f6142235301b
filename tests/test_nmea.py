"""NMEA framing and fix merging: checksums, broken input, cycles, dates; fuzzed with hypothesis."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import PLAUSIBLE_AFTER
from agent.gnss.fix import GPS_ROLLOVER_S, FixTracker, correct_rollover
from agent.gnss.nmea import MAX_SENTENCE, NmeaFramer, build, checksum, strip_comments
from agent.modem.emulator import restamp, static_cycle

pytestmark = pytest.mark.timeout(60)  # fuzzing must never hang

GGA = "$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76"
RMC = "$GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A*43"


def frame(data: bytes) -> tuple[list[str], NmeaFramer]:
    framer = NmeaFramer()
    out = [s.raw for s in framer.feed(data)]
    framer.flush()
    return out, framer


def test_valid_sentences_are_accepted_with_upper_or_lower_case_checksums():
    lower = GGA[:-2] + GGA[-2:].lower()
    got, framer = frame(f"{GGA}\r\n{lower}\n{RMC}\r".encode())
    assert got == [GGA, lower, RMC]
    assert framer.stats.good == 3 and framer.stats.garbage == 0


def test_bad_missing_and_malformed_checksums_are_counted_and_skipped():
    bad = GGA[:-2] + "00"
    got, framer = frame(f"{bad}\r\n{GGA[: GGA.index('*')]}\r\n{GGA[:-1]}\r\n$GPGGA,1*ZZ\r\n".encode())
    assert got == []
    assert framer.stats.bad_checksum == 1
    assert framer.stats.no_checksum == 1  # gpsd rejects sentences without a checksum too
    assert framer.stats.garbage == 2


def test_glued_nul_and_truncated_sentences():
    # a sentence cut short by the next `$` is garbage; the next one, properly ended, is kept
    data = f"{GGA[:30]}{RMC}\r\n$GPRMC,000346.03,A,4808\x00\x00\x00   \r\nnoise without dollar\r\n{GGA}".encode()
    got, framer = frame(data)
    assert got == [RMC]  # the last GGA has no line end: incomplete at end of input
    assert framer.stats.garbage == 4


def test_split_anywhere_gives_the_same_result():
    data = f"junk{GGA}\r\n{RMC}\r\n".encode()
    whole, _ = frame(data)
    for cut in range(len(data)):
        framer = NmeaFramer()
        parts = [s.raw for s in framer.feed(data[:cut])] + [s.raw for s in framer.feed(data[cut:])]
        assert parts == whole


def test_proprietary_sentences_are_framed_but_ignored_by_the_fix():
    pmtk = build("PMTK010,001")
    got, _ = frame(f"{pmtk}\r\n".encode())
    assert got == [pmtk]
    tracker = FixTracker()
    framer = NmeaFramer()
    for s in framer.feed(f"{pmtk}\r\n".encode()):
        assert s.proprietary and s.kind == ""
        assert tracker.feed(s) is None
    assert tracker.stats.ignored == 1


def test_overlong_runs_are_bounded_and_counted():
    got, framer = frame(b"$GP" + b"A" * (MAX_SENTENCE * 4) + b"*00\r\n" + f"{GGA}\r\n".encode())
    assert got == [GGA]
    assert framer.stats.garbage == 1 and len(framer._candidate) == 0


def test_strip_comments_keeps_every_other_byte():
    data = b"# header $GPGGA,bogus*00\r\n$A\x00\r\n#x\n$B\r\n"
    assert strip_comments(data) == b"$A\x00\r\n$B\r\n"


def test_checksum_matches_the_xor_definition():
    assert checksum("GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,") == 0x76
    assert build("X") == "$X*58"


def _fixes(lines: list[str]) -> list:
    framer, tracker = NmeaFramer(), FixTracker()
    fixes = []
    for s in framer.feed(("\r\n".join(lines) + "\r\n").encode()):
        fix = tracker.feed(s, 1.0)
        if fix is not None:
            fixes.append(fix)
    last = tracker.end_cycle(2.0)
    return [*fixes, last] if last is not None else fixes


def test_a_cycle_merges_gga_rmc_gsa_vtg_into_one_fix():
    cycle = [
        build("GPGGA,120000.00,4807.038,N,01131.324,E,1,08,0.9,545.4,M,46.9,M,,"),
        build("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"),
        build("GPRMC,120000.00,A,4807.038,N,01131.324,E,022.4,084.4,230394,003.1,W"),
        build("GPVTG,084.4,T,077.8,M,022.4,N,041.5,K,A"),
    ]
    (fix,) = _fixes(cycle)
    assert fix.mode == 3
    assert fix.lat == pytest.approx(48.1173) and fix.lon == pytest.approx(11.52206667)
    assert fix.time == calendar.timegm((1994, 3, 23, 12, 0, 0))
    assert fix.sats_used == 5 and fix.hdop == 1.3 and fix.alt_msl == 545.4
    assert fix.speed == pytest.approx(22.4 * 0.514444) and fix.track == 84.4


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "GQ"])
def test_every_constellation_talker_gives_a_fix(talker: str):
    (fix,) = _fixes(
        [
            build(f"{talker}GNS,120000.00,4807.038,N,01131.324,E,AAN,10,0.8,545.4,46.9,,,S"),
            build(f"{talker}GSA,A,3,04,05,09,12,,,,,,,,,1.5,0.8,1.2,1"),
            build(f"{talker}ZDA,120000.00,23,03,2026,00,00"),
        ]
    )
    assert fix.mode == 3 and fix.sats_used == 4 and fix.hdop == 0.8
    assert fix.time == calendar.timegm((2026, 3, 23, 12, 0, 0))


def test_fix_loss_and_recovery_follow_the_receiver():
    good = [
        build("GPGGA,120000.00,4807.038,N,01131.324,E,1,08,0.9,545.4,M,46.9,M,,"),
        build("GPRMC,120000.00,A,4807.038,N,01131.324,E,0.0,,230394,,,A"),
    ]
    lost = [build("GPGGA,,,,,,0,,,,,,,,"), build("GPRMC,,V,,,,,,,,,,N")]
    back = [
        build("GPGGA,120005.00,4807.040,N,01131.324,E,1,05,1.9,545.0,M,46.9,M,,"),
        build("GPRMC,120005.00,A,4807.040,N,01131.324,E,0.0,,230394,,,A"),
    ]
    fixes = _fixes(good + lost + back)
    assert [f.mode for f in fixes] == [3, 1, 3]
    assert fixes[1].lat is None and fixes[1].time is None
    assert fixes[2].time == calendar.timegm((1994, 3, 23, 12, 0, 5))


def test_gga_alone_has_no_date_until_rmc_or_zda_supplies_one():
    fixes = _fixes(
        [
            build("GPGGA,235959.00,4807.038,N,01131.324,E,1,08,0.9,545.4,M,46.9,M,,"),
            build("GPZDA,235959.00,31,12,2026,00,00"),
            build("GPGGA,000000.00,4807.038,N,01131.324,E,1,08,0.9,545.4,M,46.9,M,,"),
        ]
    )
    assert fixes[0].time == calendar.timegm((2026, 12, 31, 23, 59, 59))
    assert fixes[1].time == calendar.timegm((2027, 1, 1, 0, 0, 0))  # midnight rolls the date


def test_void_rmc_times_and_garbage_dates_do_not_make_a_fix():
    fixes = _fixes([build("GPRMC,235948.00,V,0000.0000,N,00000.0000,E,,,161206,,,N")])
    assert [f.mode for f in fixes] == [1]
    assert fixes[0].time is None


def test_gps_week_rollover_correction():
    true = datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp()
    assert correct_rollover(true - GPS_ROLLOVER_S, PLAUSIBLE_AFTER) == true
    assert correct_rollover(true, PLAUSIBLE_AFTER) == true


def test_emulator_sentences_decode_to_their_position():
    utc = datetime(2026, 11, 27, 9, 30, 15, 500000, tzinfo=UTC)
    (fix,) = _fixes(static_cycle(-33.8568, 151.2153, 12.0, utc))
    assert fix.mode == 3 and fix.time == utc.timestamp()
    assert fix.lat == pytest.approx(-33.8568, abs=1e-7) and fix.lon == pytest.approx(151.2153, abs=1e-7)
    moved = restamp(RMC, utc)
    assert ",093015.50,A," in moved and ",271126," in moved
    assert checksum(moved[1 : moved.index("*")]) == int(moved[-2:], 16)


# -- fuzzing: nothing a receiver sends may raise or hang ---------------------------------------------
NMEA_ALPHABET = st.sampled_from(list(b"$*,\r\n\x00.0123456789ABCDEFGNPRSVWMTLQZ-"))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_never_raise(chunks: list[bytes]):
    framer, tracker = NmeaFramer(), FixTracker()
    for chunk in chunks:
        for sentence in framer.feed(chunk):
            tracker.feed(sentence, 0.0)
        assert len(framer._candidate) <= MAX_SENTENCE
    framer.flush()
    tracker.end_cycle(0.0)


@FUZZ
@given(st.lists(st.lists(NMEA_ALPHABET, max_size=120).map(bytes), max_size=10))
def test_nmea_shaped_noise_never_raises(chunks: list[bytes]):
    framer, tracker = NmeaFramer(), FixTracker()
    for chunk in chunks:
        for sentence in framer.feed(chunk):
            tracker.feed(sentence, 0.0)
    tracker.end_cycle(0.0)


_FIELD = st.text(alphabet="0123456789.,-NSEWAVMT", max_size=12)


@FUZZ
@given(
    st.sampled_from(["GPGGA", "GNRMC", "GPGSA", "GLGSV", "GPVTG", "GPGLL", "GPZDA", "GNGNS", "GPXXX"]),
    st.lists(_FIELD, max_size=22),
)
def test_valid_checksum_with_random_fields_never_raises(tag: str, fields: list[str]):
    """A good checksum around nonsense (gp-320fw has one): parsed defensively, never trusted blindly."""
    tracker = FixTracker()
    for sentence in NmeaFramer().feed((build(",".join([tag, *fields])) + "\r\n").encode()):
        tracker.feed(sentence, 0.0)
    fix = tracker.end_cycle(0.0)
    if fix is not None and fix.lat is not None:
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180
