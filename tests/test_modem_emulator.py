"""The emulator package: its command table answers like the firmware, and production code reaches
it only through pyserial's URL handler (a real agent on a real pty never imports it)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.modem.emulator import COMMANDS, EmulatorCounters, ModemEmulator, ModemState, PtyLink, Scenario
from agent.modem.emulator.registry import scenario_from_query
from agent.modem.urlhandlers import emulator_url
from tests.conftest import ROOT, agent_env

pytestmark = pytest.mark.timeout(120)


def answer(state: ModemState, command: str, now: float = 10.0) -> tuple[tuple[str, ...], str]:
    reply = COMMANDS.answer(command, now=now, state=state, counters=EmulatorCounters())
    return reply.lines, reply.final


def booted(**knobs: object) -> ModemState:
    state = ModemState(Scenario(**{"boot_s": 0.0, "register_delay_s": 0.0, **knobs}))  # type: ignore[arg-type]
    state.boot(0.0)
    return state


# -- the command table ---------------------------------------------------------------------------------
def test_vendor_commands_belong_to_their_vendor():
    quectel, simcom = booted(vendor="quectel"), booted(vendor="simcom")
    assert answer(quectel, "AT+QCCID") == (("+QCCID: 8931440400012345678",), "OK")
    assert answer(simcom, "AT+QCCID") == ((), "ERROR")
    assert answer(simcom, "AT+CICCID")[0] == ("+ICCID: 8931440400012345678",)
    assert answer(quectel, "AT+CRESET")[1] == "ERROR" and answer(simcom, "AT+CRESET")[1] == "OK"
    assert answer(quectel, "AT+CCID")[1] == answer(simcom, "AT+CCID")[1] == "OK"  # 27.007 for both


def test_handlers_change_the_firmware_state():
    state = booted()
    assert answer(state, 'AT+CGDCONT=1,"IP","Internet.Example"') == ((), "OK")
    assert state.contexts[1] == ("IP", "Internet.Example")  # the APN keeps its case
    assert answer(state, "AT+CGDCONT?")[0] == ('+CGDCONT: 1,"IP","Internet.Example","0.0.0.0",0,0',)
    assert answer(state, "AT+CEREG=2") == ((), "OK") and state.reg_n["CEREG"] == 2
    assert answer(state, "AT+CEREG?")[0] == ('+CEREG: 2,1,"1A2B","01A2B3C4",7',)
    assert answer(state, "AT+CFUN=0") == ((), "OK") and answer(state, "AT+CEREG?")[0] == ("+CEREG: 2,0",)
    reset = COMMANDS.answer("AT+CFUN=1,1", now=1.0, state=state, counters=EmulatorCounters())
    assert reset.reboot and reset.final == "OK"


def test_a_pin_is_counted_and_a_wrong_one_costs_a_try():
    state, counters = booted(sim="pin", pin="4321"), EmulatorCounters()
    wrong = COMMANDS.answer('AT+CPIN="0000"', now=1.0, state=state, counters=counters)
    assert wrong.final == "+CME ERROR: 16" and state.pin_left == 2
    right = COMMANDS.answer('AT+CPIN="4321"', now=2.0, state=state, counters=counters)
    assert right.final == "OK" and right.urcs == ("+CPIN: READY",) and state.sim_state == "READY"
    assert counters.pin_attempts == 2


def test_unknown_and_malformed_commands_get_error_not_an_exception():
    state = booted()
    for command in ("AT+NOPE", "AT+CMEE=X", "AT+CEREG=two", "AT+CFUN=7", "AT+CGDCONT=x"):
        assert answer(state, command) == ((), "ERROR"), command


def test_garbled_answers_win_over_the_table():
    state = booted(garbled={"AT+CSQ": (("+CSQ: nan,99",), "OK")})
    assert answer(state, "AT+CSQ") == (("+CSQ: nan,99",), "OK")


def test_an_emulator_url_describes_its_scenario():
    url = emulator_url("x", scenario="roaming", vendor="simcom", timing="real", lat=1.5, gnss=1)
    query = dict(part.split("=") for part in url.split("?", 1)[1].split("&"))
    scenario = scenario_from_query(query)
    assert (scenario.vendor, scenario.roaming, scenario.lat, scenario.gnss_on) == ("simcom", True, 1.5, True)
    assert scenario.boot_s == Scenario().boot_s  # timing=real keeps the scenario's own delays
    assert scenario_from_query({}).boot_s == 0.0  # a shell demo answers at once
    with pytest.raises(ValueError, match="unknown emulator URL settings: colour"):
        scenario_from_query({"colour": "red"})
    with pytest.raises(ValueError, match="lat='north'"):
        scenario_from_query({"lat": "north"})


# -- the seam: production code never imports the emulator --------------------------------------------
SEAM = {ROOT / "agent/modem/urlhandlers/protocol_vigilemu.py"}
EMULATOR = ROOT / "agent/modem/emulator"


def imports_emulator(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.startswith("agent.modem.emulator") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith("agent.modem.emulator"):
                return True
            if node.module == "agent.modem" and any(a.name == "emulator" for a in node.names):
                return True
    return False


def test_only_the_url_handler_imports_the_emulator():
    importers = {
        path
        for path in (ROOT / "agent").rglob("*.py")
        if EMULATOR not in path.parents and imports_emulator(path)
    }
    assert importers == SEAM
    assert imports_emulator(ROOT / "tests/test_modem.py")  # the check does see an import


@pytest.fixture
def pty_modem(tmp_path: Path) -> Iterator[tuple[ModemEmulator, str]]:
    emu = ModemEmulator(Scenario(boot_s=0.0, register_delay_s=0.0), name="seam")
    link = PtyLink(emu, tmp_path / "vigil-at").start()
    yield emu, str(tmp_path / "vigil-at")
    link.stop()


# the real command line, telling at exit which modules it had loaded (whatever imported them: a
# statement, importlib, pyserial's URL handler lookup)
MODULES_AT_EXIT = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""


def run_agent_listing_modules(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, set[str]]:
    out = tmp_path / "modules.json"
    res = subprocess.run(
        [sys.executable, "-c", MODULES_AT_EXIT, str(out), *args],
        capture_output=True, text=True, timeout=120, env=agent_env(**env), cwd=ROOT,
    )
    modules = set(json.loads(out.read_text())) if out.exists() else set()
    return res.returncode, res.stderr, modules


def test_a_real_agent_with_a_modem_never_loads_the_emulator(pty_modem, tmp_path):
    emu, port = pty_modem
    code, stderr, modules = run_agent_listing_modules(
        tmp_path,
        "--source", "synthetic:1", "--max-frames", "30", "--no-realtime", "--state-dir", str(tmp_path / "s"),
        VIGIL_MODEM__PORT=port, VIGIL_MODEM__POLL_INTERVAL_S="0.2",
    )
    assert code == 0, stderr[-2000:]
    assert {"agent.modem.stage", "agent.modem.supervisor", "agent.modem.urlhandlers"} <= modules
    assert emu.counters.commands > 0  # the supervisor in that process did talk to the modem
    assert not {m for m in modules if m.startswith("agent.modem.emulator")}, "production code loaded the emulator"
    assert "agent.modem.urlhandlers.protocol_vigilemu" not in modules


def test_an_emulator_url_loads_it_through_pyserial(tmp_path):
    code, stderr, modules = run_agent_listing_modules(tmp_path, "modem", "status", "--port", "vigilemu://seam")
    assert code == 0, stderr[-2000:]
    assert {"agent.modem.urlhandlers.protocol_vigilemu", "agent.modem.emulator.device"} <= modules
