"""The GNSS reader over a real pty: a receiver replaying a real log, GNSS time for the clock, a
port that vanishes and comes back, and the location events carry (fresh fix, static, null)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.clock import Clock
from agent.gnss.fix import GPS_ROLLOVER_S, Fix
from agent.gnss.location import LocationProvider
from agent.gnss.reader import GnssReader
from agent.modem.at import open_port
from agent.modem.emulator import ModemEmulator, PtyLink, Scenario
from tests.conftest import NMEA_DIR, shared

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def receiver(tmp_path: Path):
    """A standalone NMEA receiver on a pty (/tmp/…/vigil-nmea), streaming 10 cycles a second."""
    links: list[PtyLink] = []

    def make(**scenario: object) -> tuple[ModemEmulator, str]:
        emu = ModemEmulator(Scenario(boot_s=0.0, gnss_on=True, nmea_interval_s=0.1, **scenario), name="rx")
        link = PtyLink(emu, tmp_path / "vigil-at", tmp_path / "vigil-nmea").start()
        links.append(link)
        return emu, str(tmp_path / "vigil-nmea")

    yield make
    for link in links:
        link.stop()


def start_reader(port: str, clock: Clock | None = None) -> GnssReader:
    return GnssReader(lambda: open_port(port, 9600), port_label=port, clock=clock, reopen_max_s=0.3).start()


def test_a_replayed_route_gives_fixes_and_trusted_time(receiver):
    route = shared(NMEA_DIR / "quectel.log")
    _emu, port = receiver(route=route)
    clock = Clock(ntp_probe=lambda: False)
    reader = start_reader(port, clock)
    try:
        fix = reader.wait_for(lambda f: f.has_position, 10)
        assert fix is not None, reader.status()
        assert fix.mode == 3 and fix.lat == pytest.approx(-36.7459, abs=1e-3)
        assert abs(fix.time - time.time()) < 5  # the emulator re-stamps the route to now
        state = clock.state()
        assert (state.source, state.trusted) == ("gnss", True)
        assert abs(clock.wall_at(time.monotonic()) - time.time()) < 2
        # the route contains a fix loss: the reader reports it as it happens
        assert reader.wait_for(lambda f: f.mode == 1, 10) is not None
        st = reader.status()
        assert st["counters"]["good"] > 20 and st["counters"]["bad_checksum"] == 0
        assert st["clock"]["fed"] >= 1 and reader._loop.alive() and reader._loop.name == "gnss-reader"
    finally:
        t0 = time.monotonic()
        reader.stop()
        assert time.monotonic() - t0 < 2.0


def test_the_port_vanishes_and_the_reader_comes_back(receiver):
    emu, port = receiver()
    reader = start_reader(port)
    try:
        assert reader.wait_for(lambda f: f.has_position, 10) is not None
        emu.unplug(for_s=0.4)  # USB re-enumeration
        back = time.monotonic() + 0.4
        assert reader.wait_state("absent", 5) or reader.status()["counters"]["opens"] >= 2
        fix = reader.wait_for(lambda f: f.mono > back and f.has_position, 10)  # read from the new port
        assert fix is not None, reader.status()
        assert reader.status()["counters"]["opens"] >= 2
    finally:
        reader.stop()


def test_absent_port_backs_off_and_reports(tmp_path: Path):
    reader = start_reader(str(tmp_path / "no-such-tty"))
    try:
        assert reader.wait_state("absent", 5)
        assert "no-such-tty" in reader.status()["message"]
    finally:
        reader.stop()


def test_week_rollover_is_corrected_before_the_clock_trusts_it():
    clock = Clock(ntp_probe=lambda: False)
    reader = GnssReader(lambda: None, clock=clock)
    now = time.time()
    reader._publish(Fix(mode=3, time=now - GPS_ROLLOVER_S, lat=1.0, lon=2.0, mono=time.monotonic()))
    assert clock.state().source == "gnss"
    assert abs(clock.wall_at(time.monotonic()) - now) < 1.0
    untrusted = Clock(ntp_probe=lambda: False)
    reader = GnssReader(lambda: None, clock=untrusted)
    reader._publish(Fix(mode=1, time=now, mono=time.monotonic()))  # time without a fix
    assert untrusted.state().source != "gnss"


class _Source:
    def __init__(self, fix: Fix | None) -> None:
        self.fix = fix

    def last_position(self) -> Fix | None:
        return self.fix


def test_location_prefers_a_fresh_fix_then_the_static_position():
    now = time.monotonic()
    fresh = Fix(mode=2, lat=52.1234567891, lon=4.5, hdop=1.2, mono=now - 3)
    provider = LocationProvider((52.0, 4.0), _Source(fresh), max_age_s=10)
    assert provider.location(now) == {"lat": 52.1234568, "lon": 4.5, "mode": "2d", "hdop": 1.2, "age_s": 3.0}
    assert provider.location(now + 20) == {"lat": 52.0, "lon": 4.0, "mode": "static", "hdop": None, "age_s": None}
    assert LocationProvider(None, _Source(None)).location(now) is None
    assert LocationProvider(None, None)() == {"location": None}
