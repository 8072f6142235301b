"""`agent modem status` as a technician runs it: the real command against a modem on a pty."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.modem.emulator import ModemEmulator, PtyLink, Scenario
from tests.conftest import run_agent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[tuple[ModemEmulator, str, str]]:
    emu = ModemEmulator(
        Scenario(boot_s=0.0, register_delay_s=0.0, gnss_on=True, nmea_interval_s=0.2, lat=-33.8568, lon=151.2153),
        name="cli",
    )
    link = PtyLink(emu, tmp_path / "vigil-at", tmp_path / "vigil-nmea").start()
    yield emu, str(tmp_path / "vigil-at"), str(tmp_path / "vigil-nmea")
    link.stop()


def test_status_shows_one_screen_and_writes_nothing(modem):
    emu, at_port, nmea_port = modem
    res = run_agent("modem", "status", "--port", at_port, "--gnss-port", nmea_port, timeout=60)
    assert res.returncode == 0, res.stderr
    screen = res.stdout
    for expected in (
        "Modem      Quectel EC25  firmware EC25EFAR06A06M4G  IMEI 866758041234567",
        "SIM        READY  ICCID 8931440400012345678",
        'Network    home  LTE  "Vigil Test Network"',
        "RSRP -95 dBm  RSRQ -10 dB  SINR 12 dB",
        "GNSS       engine on; 3D fix -33.8568000, 151.2153000",
        "Link       online",
    ):
        assert expected in screen, screen
    assert emu.writes() == []  # read-only: no ATE0, PIN, APN, CFUN or GNSS switching
    assert res.stderr == ""


def test_status_json(modem):
    _, at_port, _ = modem
    res = run_agent("modem", "status", "--port", at_port, "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["link"]["state"] == "online" and data["link"]["mode"] == "monitor"
    assert data["gnss"] is None


def test_a_modem_that_does_not_answer(modem):
    emu, at_port, _ = modem
    emu.hang()
    res = run_agent("modem", "status", "--port", at_port, "--timeout", "0.3", timeout=60)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "did not answer" in res.stderr and "Traceback" not in res.stderr


def test_errors_are_one_line(tmp_path: Path):
    missing = run_agent("modem", "status", "--port", str(tmp_path / "ttyUSB9"), timeout=60)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "ttyUSB9" in missing.stderr and "Traceback" not in missing.stderr
    no_port = run_agent("modem", "status", timeout=60)
    assert no_port.returncode == 2 and "--port" in no_port.stderr


def test_the_emulator_url_works_from_a_shell():
    res = run_agent("modem", "status", "--port", "vigilemu://demo?vendor=simcom", timeout=60)
    assert res.returncode == 0, res.stderr
    assert "SIMCOM" in res.stdout and "Link       online" in res.stdout
