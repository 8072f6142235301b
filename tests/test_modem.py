"""The AT engine and the LTE link supervisor against the scripted modem, over real serial I/O.

Most scenarios run over pseudo-terminals behind a udev-like symlink (pyserial's native driver,
termios and all); a few use the `vigilemu://` pyserial URL handler that `agent --simulate` uses.
The modem boots, registers, answers slowly, sends URCs mid-response, loses its SIM, asks for a
PIN, is denied, gets stuck, hangs until power-cycled and drops off the bus; the supervisor must
end up online (or say clearly why not) and count what it did.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from agent.config.modem import ModemConfig
from agent.modem.at import AtEngine, AtTimeout, PortClosed, open_port
from agent.modem.emulator import ModemEmulator, PtyLink, Scenario, register, unregister
from agent.modem.mm import port_users
from agent.modem.supervisor import LinkSupervisor

pytestmark = pytest.mark.timeout(60)

FAST = {"boot_s": 0.0, "register_delay_s": 0.2, "reboot_s": 0.3}
BOOTED = FAST


def fast_config(port: str, **overrides: object) -> ModemConfig:
    settings: dict[str, object] = {
        "port": port,
        "poll_interval_s": 0.1,
        "command_timeout_s": 0.4,
        "recovery_grace_s": 0.3,
        "step_wait_s": 0.6,
        "retry_max_s": 2.0,
        "reopen_max_s": 0.4,
        "unresponsive_after": 2,
    }
    settings.update(overrides)
    return ModemConfig(**settings)


@pytest.fixture
def pty_modem(tmp_path: Path) -> Iterator[Callable[..., tuple[ModemEmulator, str]]]:
    """Start an emulator on a pty; returns (emulator, port path: a symlink like /dev/vigil-at)."""
    links: list[PtyLink] = []

    def make(scenario: Scenario, name: str = "at") -> tuple[ModemEmulator, str]:
        emu = ModemEmulator(scenario, name=f"pty-{name}")
        link = PtyLink(emu, tmp_path / f"vigil-{name}").start()
        links.append(link)
        return emu, str(tmp_path / f"vigil-{name}")

    yield make
    for link in links:
        link.stop()


@pytest.fixture
def supervisors() -> Iterator[list[LinkSupervisor]]:
    started: list[LinkSupervisor] = []
    yield started
    for sup in started:
        t0 = time.monotonic()
        sup.stop()
        assert time.monotonic() - t0 < 3.0, "the supervisor must stop within seconds"


def run_supervisor(started: list[LinkSupervisor], cfg: ModemConfig, **kwargs: object) -> LinkSupervisor:
    kwargs.setdefault("users_probe", None)
    sup = LinkSupervisor(cfg, **kwargs).start()  # type: ignore[arg-type]
    started.append(sup)
    return sup


def state_is(*states: str) -> Callable[[dict], bool]:
    return lambda st: st["state"] in states


# -- the AT engine -----------------------------------------------------------------------------------
def test_engine_runs_one_command_at_a_time_across_threads(pty_modem):
    _emu, port = pty_modem(Scenario(**BOOTED))
    at = AtEngine(open_port(port), name="t").start()
    try:
        assert at.ping(timeout=2.0)
        at.command("ATE0")
        expected = {
            "AT+CGMI": "Quectel",
            "AT+CGMM": "EC25",
            "AT+CGSN": "866758041234567",
            "AT+CGMR": "EC25EFAR06A06M4G",
        }
        errors: list[str] = []

        def worker(command: str) -> None:
            for _ in range(15):
                lines = at.command(command, timeout=2.0).lines
                if lines != (expected[command],):
                    errors.append(f"{command} got {lines}")

        threads = [threading.Thread(target=worker, args=(c,), name=f"w-{c}") for c in expected]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
        assert at._thread is not None and at._thread.name == "t-at-reader"
    finally:
        at.stop()


def test_engine_per_command_timeouts_and_resync(pty_modem):
    _emu, port = pty_modem(Scenario(**BOOTED, slow_commands={"AT+COPS?": 0.5}))
    at = AtEngine(open_port(port), name="t", default_timeout_s=0.3).start()
    try:
        at.command("ATE0", timeout=2.0)
        with pytest.raises(AtTimeout):
            at.command("AT+COPS?")  # default 0.3 s is too short for this one
        # the late answer must not be taken for the next command's
        assert at.command("AT+CGMM", timeout=2.0).lines == ("EC25",)
        assert at.command("AT+COPS?", timeout=3.0).first("+COPS:") is not None  # a longer timeout is fine
    finally:
        at.stop()


def test_engine_reports_a_vanished_port_and_stops_promptly(pty_modem):
    emu, port = pty_modem(Scenario(**BOOTED))
    closed = threading.Event()
    at = AtEngine(open_port(port), name="t", on_closed=lambda reason: closed.set()).start()
    at.command("AT", timeout=2.0)
    emu.hang()
    failure: list[Exception] = []

    def long_command() -> None:
        try:
            at.command("AT+COPS=?")  # documented maximum: 180 s
        except Exception as exc:
            failure.append(exc)

    t = threading.Thread(target=long_command, name="long")
    t.start()
    emu.unplug()  # the USB device disappears mid-command
    assert closed.wait(5.0)
    t.join(5.0)
    assert not t.is_alive() and isinstance(failure[0], PortClosed)
    t0 = time.monotonic()
    at.stop()
    assert time.monotonic() - t0 < 1.0


# -- the supervisor ------------------------------------------------------------------------------------
def test_normal_boot_identifies_configures_and_goes_online(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**{**FAST, "boot_s": 0.3}))  # the first ATs go unanswered while it boots
    sup = run_supervisor(supervisors, fast_config(port, apn="internet.test"), gnss_via_modem=True)
    st = sup.wait_for(lambda s: s["state"] == "online" and s["operator"], 10)
    assert st is not None, sup.status()
    assert st["modem"] == {
        "manufacturer": "Quectel",
        "model": "EC25",
        "firmware": "EC25EFAR06A06M4G",
        "imei": "866758041234567",
        "vendor": "quectel",
    }
    assert st["sim"] == {"state": "READY", "iccid": "8931440400012345678"}
    assert st["registration"]["state"] == "home" and st["registration"]["source"] == "CEREG"
    assert (st["technology"], st["operator"], st["attached"]) == ("LTE", "Vigil Test Network", True)
    assert st["signal"] == {"csq": 20, "rssi_dbm": -65.0, "rsrp_dbm": -95.0, "rsrq_db": -10.0, "sinr_db": 12.0}
    assert emu.contexts[1] == ("IPV4V6", "internet.test") and st["apn"] == "internet.test"
    assert emu.gnss_on and st["gnss_enabled"] is True
    assert {"ATE0", "AT+CMEE=1", "AT+CEREG=2"} <= set(emu.history)
    assert all(n == 0 for n in st["recovery"]["counts"].values())
    assert sup.link_context() == {
        "registration": "home",
        "technology": "LTE",
        "operator": "Vigil Test Network",
        "signal": {"rssi_dbm": -65.0, "rsrp_dbm": -95.0, "rsrq_db": -10.0, "sinr_db": 12.0},
    }
    assert sup._loop.alive() and sup._loop.name == "modem-supervisor"


def test_slow_replies_within_their_timeouts(pty_modem, supervisors):
    _emu, port = pty_modem(Scenario(**FAST, reply_delay_s=0.05, slow_commands={"AT+COPS?": 0.4}))
    sup = run_supervisor(supervisors, fast_config(port, command_timeout_s=1.0))
    st = sup.wait_for(lambda s: s["state"] == "online" and s["operator"], 15)
    assert st is not None, sup.status()
    before = st["counters"]["timeouts"]  # an AT sent while the modem boots may be swallowed
    later = sup.wait_for(lambda s: s["counters"]["commands"] > st["counters"]["commands"] + 10, 15)
    assert later is not None and later["state"] == "online"
    assert later["counters"]["timeouts"] == before


def test_urcs_in_the_middle_of_responses(pty_modem, supervisors):
    _emu, port = pty_modem(Scenario(**FAST, urc_mid_response=True, vendor="simcom"))
    sup = run_supervisor(supervisors, fast_config(port))
    st = sup.wait_for(lambda s: s["state"] == "online" and s["operator"] and s["counters"]["urcs"] > 10, 10)
    assert st is not None, sup.status()
    assert st["modem"]["vendor"] == "simcom" and st["signal"]["rsrp_dbm"] == -95.0
    assert st["registration"]["state"] == "home" and st["registration"]["area"] == "1A2B"


def test_sim_missing_is_reported(pty_modem, supervisors):
    _emu, port = pty_modem(Scenario(**FAST, sim="missing"))
    sup = run_supervisor(supervisors, fast_config(port, recovery_grace_s=30))
    st = sup.wait_for(state_is("sim_missing"), 10)
    assert st is not None, sup.status()
    assert "no SIM" in st["message"] and not st["up"]
    assert sup.link_context()["registration"] == "sim_missing"


def test_pin_required_is_entered_once_per_boot(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**FAST, sim="pin", pin="4321"))
    sup = run_supervisor(supervisors, fast_config(port, pin="4321"))
    assert sup.wait_for(state_is("online"), 10) is not None, sup.status()
    assert emu.counters.pin_attempts == 1
    assert not any("4321" in line for line in map(str, sup.status().values()))


def test_pin_required_without_a_pin_says_so_and_does_not_reset(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**FAST, sim="pin"))
    sup = run_supervisor(supervisors, fast_config(port, recovery_grace_s=0.1))
    st = sup.wait_for(state_is("sim_locked"), 10)
    assert st is not None and "set modem.pin" in st["message"]
    sup.wait_for(lambda s: s["counters"]["commands"] > 12, 10)  # many polls later …
    assert all(n == 0 for n in sup.status()["recovery"]["counts"].values())  # … no reset of a locked SIM
    assert emu.counters.pin_attempts == 0


def test_a_wrong_pin_is_never_retried(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**FAST, sim="pin", pin="4321"))
    sup = run_supervisor(supervisors, fast_config(port, pin="0000"))
    st = sup.wait_for(lambda s: s["state"] == "sim_locked" and "rejected" in s["message"], 10)
    assert st is not None, sup.status()
    sup.wait_for(lambda s: s["counters"]["commands"] > 12, 10)
    assert emu.counters.pin_attempts == 1 and emu.pin_left == 2


def test_registration_denied_then_granted(pty_modem, supervisors):
    _emu, port = pty_modem(Scenario(**FAST, denied_for_s=0.8))
    sup = run_supervisor(supervisors, fast_config(port, recovery_grace_s=30))
    denied = sup.wait_for(state_is("denied"), 10)
    assert denied is not None and denied["registration"]["state"] == "denied"
    assert sup.wait_for(state_is("online"), 10) is not None
    assert all(n == 0 for n in sup.status()["recovery"]["counts"].values())


def test_stuck_radio_is_cured_by_radio_off_on(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**FAST, radio_stuck=True))
    sup = run_supervisor(supervisors, fast_config(port))
    st = sup.wait_for(lambda s: s["state"] == "online" and s["recovery"]["last_recovery"], 15)
    assert st is not None, sup.status()
    counts = st["recovery"]["counts"]
    assert (counts["requery"], counts["radio_cycle"], counts["reset"]) == (1, 1, 0)
    assert st["recovery"]["last_recovery"]["after_step"] == "radio_cycle"
    assert emu.counters.radio_cycles == 1


def test_stuck_stack_is_cured_by_a_reset_and_the_port_comes_back(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**FAST, needs_reset=True))
    sup = run_supervisor(supervisors, fast_config(port))
    st = sup.wait_for(lambda s: s["state"] == "online" and s["recovery"]["last_recovery"], 20)
    assert st is not None, sup.status()
    counts = st["recovery"]["counts"]
    assert (counts["radio_cycle"], counts["reset"], counts["power_cycle"]) == (1, 1, 0)
    assert counts["reopen"] >= 1  # the reset re-enumerated the USB device
    assert emu.counters.resets == 1


def test_a_hung_modem_is_power_cycled_by_the_configured_command(pty_modem, supervisors, tmp_path):
    switch = tmp_path / "power-switch"
    emu, port = pty_modem(Scenario(**FAST, power_switch=switch))
    sup = run_supervisor(
        supervisors, fast_config(port, command_timeout_s=0.2, step_wait_s=0.8, power_cycle_command=f"touch {switch}")
    )
    assert sup.wait_for(state_is("online"), 10) is not None
    emu.hang()
    assert sup.wait_for(state_is("no_response"), 15) is not None
    st = sup.wait_for(lambda s: s["state"] == "online" and s["recovery"]["last_recovery"], 30)
    assert st is not None, sup.status()
    counts = st["recovery"]["counts"]
    assert (counts["requery"], counts["radio_cycle"], counts["reset"], counts["power_cycle"]) == (1, 1, 1, 1)
    assert st["recovery"]["last_recovery"]["after_step"] == "power_cycle"
    assert emu.counters.power_cycles == 1


def test_ladder_without_a_cure_keeps_trying_with_backoff(supervisors):
    emu = ModemEmulator(Scenario(**FAST), name="no-cure")
    url = register(emu)
    try:
        sup = run_supervisor(supervisors, fast_config(url, command_timeout_s=0.2, step_wait_s=0.2, retry_max_s=0.4))
        assert sup.wait_for(state_is("online"), 10) is not None
        emu.hang()  # no power-cycle command configured: nothing cures it
        st = sup.wait_for(lambda s: s["recovery"]["counts"]["requery"] >= 2, 30)  # a second round began
        assert st is not None, sup.status()
        assert st["state"] == "no_response" and st["recovery"]["round"] >= 1
        assert st["recovery"]["counts"]["reset"] >= 1
        # every command of a round costs a timeout, never a spin
        assert emu.counters.commands < 200
    finally:
        unregister(emu)


def test_the_port_vanishes_and_comes_back(supervisors):
    emu = ModemEmulator(Scenario(**FAST, vanish_after_commands=60, vanish_for_s=0.6), name="vanish")
    url = register(emu)
    try:
        sup = run_supervisor(supervisors, fast_config(url, recovery_grace_s=30))
        assert sup.wait_for(state_is("absent"), 20) is not None, sup.status()
        st = sup.wait_for(lambda s: s["state"] == "online" and s["recovery"]["counts"]["reopen"] >= 1, 15)
        assert st is not None, sup.status()
        assert emu.counters.unplugs == 1
    finally:
        unregister(emu)


def test_monitor_mode_only_reads(pty_modem, supervisors):
    emu, port = pty_modem(Scenario(**FAST, sim="pin"))
    sup = run_supervisor(supervisors, fast_config(port, mode="monitor", pin="1234", apn="x"))
    st = sup.wait_for(state_is("sim_locked"), 10)
    assert st is not None and "monitor mode" in st["message"]
    assert emu.writes() == [] and emu.counters.pin_attempts == 0


def test_modemmanager_holding_the_port_is_not_fought(pty_modem, supervisors, tmp_path):
    emu, port = pty_modem(Scenario(**FAST))
    fake_mm = tmp_path / "ModemManager"  # a process named like the daemon, holding the tty open
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_mm)
    with open(port, "rb") as tty:
        proc = subprocess.Popen([str(fake_mm), "60"], stdin=tty)
    try:
        view = {"state": "registered", "operator": "MM Net", "technology": "LTE", "registration": "home"}
        sup = run_supervisor(
            supervisors,
            fast_config(port),
            users_probe=partial(port_users, probe_services=False),
            mm_probe=lambda: view,
        )
        st = sup.wait_for(state_is("modemmanager"), 10)
        assert st is not None, sup.status()
        assert "ID_MM_PORT_IGNORE" in st["message"] and st["modemmanager"] == view
        assert emu.counters.commands == 0  # the agent never wrote to the port
        assert sup.link_context()["registration"] == "modemmanager"
        assert sup.link_context()["operator"] == "MM Net"
    finally:
        proc.kill()  # our own fake daemon, by its pid
        proc.wait()
    assert sup.wait_for(state_is("online"), 10) is not None  # handed over: the agent takes the port


def test_port_users_sees_holders_and_unreadable_proc(tmp_path):
    proc = tmp_path / "proc"
    dev = tmp_path / "ttyUSB2"
    dev.write_text("")
    (proc / "4242" / "fd").mkdir(parents=True)
    (proc / "4242" / "fd" / "7").symlink_to(dev)
    (proc / "4242" / "comm").write_text("ModemManager\n")
    (proc / "77" / "fd").mkdir(parents=True)
    (proc / "77" / "comm").write_text("minicom\n")
    (proc / "77" / "fd" / "3").symlink_to(dev)
    users = port_users(str(dev), proc=proc, probe_services=False)
    assert users.modemmanager_owns and sorted(users.holders) == [(77, "minicom"), (4242, "ModemManager")]
    assert users.others == [(77, "minicom")]
    nobody = port_users(str(tmp_path / "other"), proc=proc, probe_services=False)
    assert not nobody.modemmanager_owns and nobody.explain() == ""
