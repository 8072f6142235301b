"""GNSS checks for a real node: NMEA framing, fixes and time from the real receiver.

    VIGIL_HW_GNSS=/dev/ttyUSB1 (or /dev/serial0, /dev/vigil-nmea)   unset: every check skips
    VIGIL_HW_GNSS_BAUD=9600
    VIGIL_HW_GNSS_FIX_S=180        time to first fix allowed (cold start under open sky)

For a modem's built-in GNSS, switch it on first (Quectel: AT+QGPS=1, SIMCom: AT+CGPS=1,1), or run
the agent with gnss.source = "modem".
"""

from __future__ import annotations

import os
import time

import pytest

from agent.clock import Clock, kernel_reports_synchronised
from agent.gnss.nmea import NmeaFramer
from agent.gnss.reader import GnssReader
from agent.modem.at import open_port
from agent.modem.mm import is_device_path

PORT = os.environ.get("VIGIL_HW_GNSS", "")
BAUD = int(os.environ.get("VIGIL_HW_GNSS_BAUD", "9600"))
FIX_S = float(os.environ.get("VIGIL_HW_GNSS_FIX_S", "180"))


@pytest.fixture(scope="module")
def port() -> str:
    if not PORT:
        pytest.skip("set VIGIL_HW_GNSS to the receiver's NMEA port (e.g. /dev/ttyUSB1) to run the GNSS checks")
    if is_device_path(PORT) and not os.path.exists(PORT):
        pytest.skip(f"VIGIL_HW_GNSS={PORT} does not exist (receiver unplugged? GNSS not enabled on the modem?)")
    return PORT


@pytest.mark.timeout(30)
def test_nmea_flows_with_valid_checksums(port: str):
    serial_port = open_port(port, BAUD)
    framer = NmeaFramer()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            framer.feed(serial_port.read(512))
    finally:
        serial_port.close()
    stats = framer.stats
    assert stats.good > 0, f"no valid NMEA in 5 s on {port} at {BAUD} baud: {stats.as_dict()} (wrong baud rate?)"
    assert stats.bad_checksum <= max(2, stats.good // 20), stats.as_dict()


@pytest.mark.timeout(FIX_S + 30)
def test_fix_position_and_time(port: str):
    clock = Clock()
    reader = GnssReader(lambda: open_port(port, BAUD), port_label=port, clock=clock).start()
    try:
        fix = reader.wait_for(lambda f: f.has_position and f.time is not None, FIX_S)
        assert fix is not None, f"no fix within {FIX_S:.0f}s (antenna? sky view?): {reader.status()}"
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180 and fix.mode in (2, 3)
        if kernel_reports_synchronised():
            offset = fix.time - (time.time() - (time.monotonic() - fix.mono))
            assert abs(offset) < 2.0, f"GNSS time is {offset:+.1f}s off the NTP-synchronised clock"
        print(f"\n{fix.as_dict()} status={reader.status()['counters']}")
    finally:
        reader.stop()
