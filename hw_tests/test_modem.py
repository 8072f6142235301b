"""LTE modem checks for a real node: the AT engine, parsers and supervisor against the real modem.

    VIGIL_HW_MODEM=/dev/ttyUSB2 (or /dev/vigil-at)   the AT port; unset: every check skips
    VIGIL_HW_MODEM_BAUD=115200                      UART modems only
    VIGIL_HW_MODEM_MANAGED=1                        also run the managed supervisor (it writes:
                                                    ATE0, URC settings, CFUN=1, and modem.apn if set)
    VIGIL_HW_MODEM_APN=internet                     APN for the managed check (optional)
    VIGIL_HW_MODEM_ONLINE_S=180                     how long registration may take

The read-only checks never change the modem's configuration. If ModemManager owns the port the
checks skip and say how to hand it over.
"""

from __future__ import annotations

import os
import threading

import pytest

from agent.config.modem import ModemConfig
from agent.modem.at import AtEngine, open_port
from agent.modem.mm import is_device_path, port_users
from agent.modem.parse import parse_cops, parse_csq, parse_registration
from agent.modem.supervisor import LinkSupervisor

PORT = os.environ.get("VIGIL_HW_MODEM", "")
BAUD = int(os.environ.get("VIGIL_HW_MODEM_BAUD", "115200"))
ONLINE_S = float(os.environ.get("VIGIL_HW_MODEM_ONLINE_S", "180"))


@pytest.fixture(scope="module")
def port() -> str:
    if not PORT:
        pytest.skip("set VIGIL_HW_MODEM to the modem's AT port (e.g. /dev/ttyUSB2) to run the modem checks")
    if is_device_path(PORT):
        if not os.path.exists(PORT):
            pytest.skip(f"VIGIL_HW_MODEM={PORT} does not exist (modem unplugged? wrong udev name?)")
        users = port_users(PORT)
        if users.modemmanager_owns:
            pytest.skip(users.explain())
    return PORT


@pytest.fixture
def at(port: str):
    engine = AtEngine(open_port(port, BAUD), name="hw").start()
    if not any(engine.ping(timeout=2.0) for _ in range(3)):
        engine.stop()
        pytest.fail(f"{port} opened but nothing answers AT (wrong port? the AT port is usually ttyUSB2)")
    yield engine
    engine.stop()


@pytest.mark.timeout(60)
def test_survey_identifies_the_modem_read_only(port: str):
    st = LinkSupervisor(ModemConfig(port=port, baudrate=BAUD, mode="monitor")).survey()
    assert st["state"] not in ("absent", "no_response"), st["message"]
    modem = st["modem"]
    assert modem["manufacturer"] and modem["model"], modem
    assert modem["imei"] and modem["imei"].isdigit() and len(modem["imei"]) == 15, modem
    assert st["sim"]["state"] is not None
    print(f"\n{modem} sim={st['sim']} registration={st['registration']} signal={st['signal']}")


@pytest.mark.timeout(60)
def test_answers_parse(at: AtEngine):
    for kind in ("CREG", "CGREG", "CEREG"):
        resp = at.command(f"AT+{kind}?", check=False)
        if resp.ok:
            text = resp.first(f"+{kind}:")
            assert text is not None and parse_registration(text, solicited=True) is not None, resp
    csq = at.command("AT+CSQ").first("+CSQ:")
    assert csq is not None and parse_csq(csq) is not None
    cops = at.command("AT+COPS?").first("+COPS:")
    assert cops is not None and parse_cops(cops) is not None


@pytest.mark.timeout(120)
def test_one_command_at_a_time_from_many_threads(at: AtEngine):
    expected = {c: at.command(c).lines for c in ("AT+CGMI", "AT+CGMM", "AT+CGSN")}
    errors: list[str] = []

    def worker(command: str) -> None:
        for _ in range(10):
            lines = at.command(command).lines
            if lines != expected[command]:
                errors.append(f"{command}: {lines}")

    threads = [threading.Thread(target=worker, args=(c,), name=f"hw-{c}") for c in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert errors == []


@pytest.mark.timeout(ONLINE_S + 60)
def test_managed_supervisor_goes_online(port: str):
    if os.environ.get("VIGIL_HW_MODEM_MANAGED") != "1":
        pytest.skip("set VIGIL_HW_MODEM_MANAGED=1 to let the supervisor configure the modem")
    cfg = ModemConfig(port=port, baudrate=BAUD, apn=os.environ.get("VIGIL_HW_MODEM_APN", ""), poll_interval_s=5)
    sup = LinkSupervisor(cfg).start()
    try:
        st = sup.wait_for(lambda s: s["state"] == "online", ONLINE_S)
        assert st is not None, sup.status()
        assert st["operator"] and st["technology"] and st["signal"]["rssi_dbm"] is not None
    finally:
        sup.stop()
