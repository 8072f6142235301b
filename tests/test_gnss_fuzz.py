"""Checksum-valid, semantically wrong NMEA (issue 13, item 2): a bad field is unknown, never fatal.

The framer only checks the checksum; what a receiver (or a man in the middle of a serial line, or a
firmware bug) puts inside a valid sentence is fuzzed here: wrong field types, lengths and ranges,
empty, missing, repeated and extra fields. Nothing may raise, nothing may be reported that is out of
range, the parsers must catch every case by design (not the tracker's last-resort guard), and the
next good cycles must decode as if the bad sentence had never come. Then the same with real parts:
the reader on a real pty keeps its port and its fixes, and `agent gps replay` keeps going.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.gnss.fix import Fix, FixTracker
from agent.gnss.nmea import NmeaFramer, build
from agent.gnss.reader import GnssReader
from agent.modem.at import open_port
from agent.modem.emulator import ModemEmulator, PtyLink, Scenario
from tests.conftest import NMEA_DIR, run_agent, shared
from tests.fieldfuzz import mutate, mutations

pytestmark = pytest.mark.timeout(120)

TIME = "092750.000"
TEMPLATES = {  # one good sentence of every type the tracker reads (bodies, without $ and checksum)
    "GGA": f"GPGGA,{TIME},5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,",
    "RMC": f"GPRMC,{TIME},A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A",
    "GSA": "GPGSA,A,3,10,07,05,02,29,04,08,13,,,,,1.72,1.03,1.38",
    "GSV": "GPGSV,3,1,11,10,63,137,17,07,61,098,15,05,59,290,20,08,54,157,30",
    "GLL": f"GPGLL,5321.6802,N,00630.3372,W,{TIME},A,A",
    "VTG": "GPVTG,31.66,T,,M,0.02,N,0.04,K,A",
    "ZDA": f"GPZDA,{TIME},28,05,2011,00,00",
    "GNS": f"GNGNS,{TIME},5321.6802,N,00630.3372,W,AN,08,1.03,61.7,55.2,,,V",
}
CYCLE = ("RMC", "GGA", "GSA", "GSV", "VTG")

# Values that are wrong somewhere: other types, signs, exponents, overflow, padding, separators.
BAD_VALUES = [
    "",
    "X",
    "-",
    "+",
    ".",
    "..",
    "1.2.3",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e9",
    "1E-3",
    "0x1F",
    "1_0",
    " 5",
    "5 ",
    "-1",
    "-0",
    "-91.5",
    "360.1",
    "999999",
    "9" * 40,
    "0" * 30,
    "99.99",
    "250",
    "60",
    "2400",
    "246060",
    "000000",
    "320299",
    "311399",
    "1980",
    "A",
    "V",
    "N",
    "S",
    "3D",
    "12:30:00",
]
FIELD = st.one_of(
    st.sampled_from(BAD_VALUES),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*,"), max_size=16
    ),
)
MUTATION = mutations(FIELD, first=1)  # field 0 is the sentence type


def cycle(stamp: str) -> list[str]:
    return [build(TEMPLATES[kind].replace(TIME, stamp)) for kind in CYCLE]


def decode(sentences: list[str]) -> tuple[list[Fix], FixTracker]:
    framer, tracker = NmeaFramer(), FixTracker()
    fixes = []
    for raw in sentences:
        for sentence in framer.feed((raw + "\r\n").encode()):
            fix = tracker.feed(sentence, 0.0)
            if fix is not None:
                fixes.append(fix)
    last = tracker.end_cycle(0.0)
    if last is not None:
        fixes.append(last)
    assert framer.stats.good == len(sentences)  # every one of them is checksum-valid
    return fixes, tracker


def assert_sane(fix: Fix) -> None:
    assert fix.mode in (1, 2, 3)
    if fix.lat is not None or fix.lon is not None:
        assert fix.lat is not None and fix.lon is not None
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180
    for value in (fix.time, fix.alt_msl, fix.hdop, fix.pdop, fix.vdop, fix.speed, fix.track):
        assert value is None or math.isfinite(value)
    assert fix.speed is None or fix.speed >= 0
    assert fix.track is None or 0 <= fix.track <= 360
    assert fix.alt_msl is None or -1000 <= fix.alt_msl <= 100_000
    assert fix.sats_used is None or 0 <= fix.sats_used <= 255
    assert fix.sats_visible is None or 0 <= fix.sats_visible <= 255
    assert fix.quality is None or 0 <= fix.quality <= 9
    json.dumps(fix.as_dict(), allow_nan=False)  # what telemetry and the replay print must stay JSON


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(sorted(TEMPLATES)), st.lists(MUTATION, min_size=1, max_size=4), st.integers(1, 3))
def test_semantically_wrong_sentences_are_skipped_and_forgotten(kind: str, edits, copies: int):
    bad = build(mutate(TEMPLATES[kind].replace(TIME, "092751.000"), edits, first=1))
    clean = cycle("092750.000") + cycle("092752.000") + cycle("092753.000") + cycle("092754.000")
    fuzzed = (
        cycle("092750.000") + [bad] * copies + cycle("092752.000") + cycle("092753.000") + cycle("092754.000")
    )
    expected, _ = decode(clean)
    got, tracker = decode(fuzzed)
    assert tracker.stats.unexpected == 0, "a parser raised: the last-resort guard caught it"
    for fix in got:
        assert_sane(fix)
    # two good cycles later, nothing of the bad sentence is left
    assert got[-1] == expected[-1]


def test_every_field_of_every_sentence_wrong_or_cut_off():
    """The systematic grid behind the fuzzer: each template cut after every field, and every field
    replaced by every bad value (the fuzzer once found a ZDA cut after its month this way)."""
    framer = NmeaFramer()
    base = [s for raw in cycle("092750.000") for s in framer.feed((raw + "\r\n").encode())]
    variants = []
    for kind, body in TEMPLATES.items():
        fields = body.replace(TIME, "092751.000").split(",")
        variants += [(kind, ",".join(fields[:n])) for n in range(1, len(fields))]
        for i in range(1, len(fields)):
            variants += [(kind, ",".join([*fields[:i], bad, *fields[i + 1 :]])) for bad in BAD_VALUES]
    for kind, body in variants:
        tracker = FixTracker()
        for sentence in base:
            tracker.feed(sentence)
        (bad,) = framer.feed((build(body) + "\r\n").encode())
        done = tracker.feed(bad)
        last = tracker.end_cycle()
        assert tracker.stats.unexpected == 0, (kind, body)
        for fix in (done, last):
            if fix is not None:
                assert_sane(fix)


def test_the_reported_case_a_non_numeric_satellite_count():
    """The review's reproduction: it raised TypeError inside the tracker."""
    bad = build(TEMPLATES["GGA"].replace(",1,8,", ",1,X8,").replace(TIME, "092751.000"))
    fixes, tracker = decode([*cycle("092750.000"), bad, *cycle("092752.000")])
    assert tracker.stats.malformed >= 1 and tracker.stats.unexpected == 0
    assert (
        [f.mode for f in fixes] and fixes[-1].mode == 3 and fixes[-1].lat == pytest.approx(53.36134, abs=1e-5)
    )


def test_the_last_resort_guard_counts_restores_and_goes_on(monkeypatch):
    """Should a parser still fail in a way nobody foresaw, the sentence is skipped and the state is
    as before it (never half-applied), and the tracker keeps working."""
    tracker = FixTracker()
    framer = NmeaFramer()
    good = [s for raw in cycle("092750.000") for s in framer.feed((raw + "\r\n").encode())]
    for sentence in good:
        tracker.feed(sentence)
    before = tracker.in_cycle, dataclasses.replace(tracker._cur)

    def broken(self, f, mono, done):
        self._cur.lat = 1.0  # half-applied, then a surprise
        raise RuntimeError("a bug")

    monkeypatch.setitem(__import__("agent.gnss.fix", fromlist=["_HANDLERS"])._HANDLERS, "GGA", broken)
    (bad,) = framer.feed((build(TEMPLATES["GGA"].replace(TIME, "092751.000")) + "\r\n").encode())
    assert tracker.feed(bad) is None
    assert tracker.stats.unexpected == 1 and tracker.stats.malformed == 1
    assert (tracker.in_cycle, tracker._cur) == before and tracker._cur.lat != 1.0
    monkeypatch.undo()
    fixes = [
        f
        for raw in cycle("092752.000")
        for s in framer.feed((raw + "\r\n").encode())
        if (f := tracker.feed(s))
    ]
    assert fixes and fixes[0].lat == pytest.approx(53.36134, abs=1e-5)


# -- real parts -------------------------------------------------------------------------------------
def write_route(path: Path, cycles: int, bad_every: int) -> Path:
    """A receiver log: good cycles, and every `bad_every`-th one carries a GGA with a bad satellite count."""
    lines = []
    for i in range(cycles):
        stamp = f"0927{i % 60:02d}.000"
        sentences = cycle(stamp)
        if i % bad_every == 1:
            sentences[1] = build(TEMPLATES["GGA"].replace(TIME, stamp).replace(",1,8,", ",1,X8,"))
        lines += sentences
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def test_the_reader_keeps_its_port_and_its_fixes_on_a_real_pty(tmp_path: Path):
    route = write_route(tmp_path / "route.nmea", 12, 3)
    emulator = ModemEmulator(
        Scenario(boot_s=0.0, gnss_on=True, nmea_interval_s=0.05, route=route), name="bad-rx"
    )
    link = PtyLink(emulator, tmp_path / "vigil-at", tmp_path / "vigil-nmea").start()
    port = str(tmp_path / "vigil-nmea")
    reader = GnssReader(lambda: open_port(port, 9600), port_label=port, reopen_max_s=0.3).start()
    try:
        first = reader.wait_for(lambda f: f.has_position, 10)
        assert first is not None, reader.status()

        def enough_bad(_fix: Fix) -> bool:  # runs under the reader's lock: no status() here
            return reader.tracker.stats.malformed >= 5

        assert reader.wait_for(enough_bad, 20) is not None, reader.status()
        later = reader.wait_for(lambda f: f.has_position and f.mono > first.mono + 1.0, 10)
        assert later is not None, reader.status()
        status = reader.status()
        assert status["counters"]["opens"] == 1, status  # never mistaken for a lost port
        assert status["state"] == "fix" and status["counters"]["unexpected"] == 0
    finally:
        reader.stop()
        link.stop()


def test_gps_replay_counts_bad_fields_and_goes_on(tmp_path: Path):
    route = write_route(tmp_path / "bad.log", 9, 3)
    res = run_agent("gps", "replay", str(route), "--json", timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    *fixes, summary = [json.loads(line) for line in res.stdout.splitlines()]
    assert summary["summary"]["malformed"] == 3 and summary["summary"]["good"] == 45
    assert len(fixes) == 9 and all(f["mode"] == 3 for f in fixes)
    table = run_agent("gps", "replay", str(route), timeout=60)
    assert table.returncode == 0 and "3 with bad fields" in table.stdout.splitlines()[-1]


@pytest.mark.parametrize("name", ["quectel.log", "gp-320fw-2019-04-07-coldboot.log", "sirfstarv-nmea.log"])
def test_real_logs_decode_without_the_guard(name: str):
    """Real receivers' output never needs the last-resort guard (and the .chk comparisons in
    test_gnss_logs.py keep holding)."""
    log = shared(NMEA_DIR / name)
    from agent.commands.gps import replay

    fixes, _, tracker = replay(log.read_bytes())
    assert fixes and tracker.stats.unexpected == 0
    for fix in fixes:
        assert_sane(fix)
