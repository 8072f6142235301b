"""The supervisor's seams: an injected clock drives it pass by pass through the production recovery
thresholds (minutes of outage in well under a second), `stop(deadline)` holds against a hung modem,
and URCs fold into link samples.

The modem is the scripted emulator behind the `vigilemu://` pyserial URL handler (real serial I/O
through pyserial and the AT engine's reader thread), sharing the test's clock.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from agent.config.modem import ModemConfig
from agent.modem.emulator import ModemEmulator, Scenario, register, unregister
from agent.modem.parse import Registration
from agent.modem.sample import LinkSample, apply_urc
from agent.modem.supervisor import LinkSupervisor

pytestmark = pytest.mark.timeout(60)

_names = itertools.count()


class FakeClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self, start: float = 5000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def emulated() -> Iterator[Callable[..., tuple[ModemEmulator, str]]]:
    made: list[ModemEmulator] = []

    def make(clock: Callable[[], float] = time.monotonic, **knobs: object) -> tuple[ModemEmulator, str]:
        scenario = Scenario(**{"boot_s": 0.0, "register_delay_s": 0.0, "reboot_s": 0.5, **knobs})  # type: ignore[arg-type]
        emu = ModemEmulator(scenario, name=f"clocked-{next(_names)}", clock=clock)
        made.append(emu)
        return emu, register(emu)

    yield make
    for emu in made:
        unregister(emu)


def drive(sup: LinkSupervisor, clock: FakeClock, until: Callable[[dict], bool], passes: int = 2000) -> dict:
    """Run the loop pass by pass on the caller's thread, resting by moving the clock."""
    for _ in range(passes):
        pause = sup.tick()
        status = sup.status()
        if until(status):
            return status
        clock.advance(pause.seconds)
    raise AssertionError(f"never got there: {sup.status()}")


def history(status: dict, step: str) -> list[float]:
    return [item["mono"] for item in status["recovery"]["history"] if item["step"] == step]


def test_the_clock_drives_the_ladder_through_the_production_thresholds(emulated):
    clock = FakeClock()
    emu, url = emulated(clock, radio_stuck=True)
    sup = LinkSupervisor(ModemConfig(port=url), monotonic=clock, sleep=clock.advance)  # grace 120 s, steps 90 s
    started, t0 = time.monotonic(), clock.now
    try:
        st = drive(sup, clock, lambda s: s["up"] and s["recovery"]["last_recovery"] is not None)
    finally:
        sup.port.drop()
    assert history(st, "requery") == [t0 + 120.0]  # searching from the first poll: 120 s of grace
    assert history(st, "radio_cycle") == [t0 + 210.0]  # 90 s after the requery
    assert st["recovery"]["last_recovery"]["after_step"] == "radio_cycle"
    assert 210.0 <= st["recovery"]["last_recovery"]["down_s"] <= 240.0  # up by the next 30 s poll at the latest
    assert st["recovery"]["counts"] == {"requery": 1, "radio_cycle": 1, "reset": 0, "power_cycle": 0, "reopen": 0}
    assert emu.counters.radio_cycles == 1
    assert time.monotonic() - started < 10  # four minutes of outage, driven without waiting for them


def test_a_hung_modem_is_power_cycled_on_the_clock(emulated):
    clock = FakeClock()
    emu, url = emulated(clock)
    config = ModemConfig(port=url, command_timeout_s=0.1)  # each unanswered command costs 0.1 s of real time
    sup = LinkSupervisor(config, power_cycle=emu.power_cycle, monotonic=clock, sleep=clock.advance)
    try:
        drive(sup, clock, lambda s: s["state"] == "online")
        emu.hang()
        hung_at = clock.now
        silent = drive(sup, clock, lambda s: s["state"] == "no_response")
        assert silent["down_s"] is not None
        st = drive(sup, clock, lambda s: s["up"] and s["recovery"]["last_recovery"] is not None)
    finally:
        sup.port.drop()
    counts = st["recovery"]["counts"]
    assert (counts["requery"], counts["radio_cycle"], counts["reset"], counts["power_cycle"]) == (1, 1, 1, 1)
    assert counts["reopen"] >= 1 and st["recovery"]["last_recovery"]["after_step"] == "power_cycle"
    steps = [history(st, name)[0] for name in ("requery", "radio_cycle", "reset", "power_cycle")]
    assert steps == sorted(steps) and all(b - a >= 90.0 for a, b in itertools.pairwise(steps))
    assert steps[0] - hung_at <= 3 * 30.0 + 1  # a silent modem gets no grace: three unanswered polls
    assert emu.counters.power_cycles == 1


def test_stop_meets_its_deadline_with_a_command_in_flight(emulated):
    emu, url = emulated()
    sup = LinkSupervisor(ModemConfig(port=url, poll_interval_s=0.1, command_timeout_s=30.0)).start()
    try:
        assert sup.wait_for(lambda s: s["state"] == "online", 10) is not None, sup.status()
        sent = sup.status()["counters"]["commands"]
        emu.hang()  # the next command waits up to its 30 s timeout
        assert sup.wait_for(lambda s: s["counters"]["commands"] > sent, 10) is not None
    finally:
        began = time.monotonic()
        sup.stop(deadline=began + 1.0)
        stopped_in = time.monotonic() - began
    assert stopped_in < 1.5 and not sup._loop.alive()
    assert sup.status()["state"] == "stopped"


# -- URCs fold into samples ----------------------------------------------------------------------------
HOME = Registration(stat=1, area="1A2B", cell="01A2B3C4", act=7)


def online() -> LinkSample:
    return LinkSample(at=0.0, port="open", sim="READY", cereg=HOME, attached=True, polled_at=0.0)


def test_a_short_registration_urc_keeps_what_the_long_form_said():
    effect = apply_urc(online(), "+CEREG: 1", 1.0)
    assert effect.sample.cereg == HOME and effect.sample.up and not effect.poll_soon


def test_losing_registration_by_urc_makes_attach_unknown_and_asks_for_a_poll():
    effect = apply_urc(online(), "+CEREG: 2", 1.0)
    assert effect.sample.state == "searching" and effect.sample.attached is None and effect.poll_soon
    back = apply_urc(effect.sample, '+CEREG: 5,"1A2B","01A2B3C4",7', 2.0)
    assert back.sample.registration_state == "roaming" and back.poll_soon


def test_reboot_and_sim_urcs_ask_for_set_up():
    assert apply_urc(online(), "RDY", 1.0).needs_setup
    sim = apply_urc(online(), "+CPIN: NOT READY", 1.0)
    assert sim.needs_setup and sim.sample.state == "sim_error"
    assert apply_urc(online(), "POWERED DOWN", 1.0).warning == "modem reports powered down"


@pytest.mark.parametrize("line", ["+CEREG: nan", "+CREG: ²", "+QIND: csq", "garbage", "+CGREG:"])
def test_nonsense_urcs_change_nothing(line):
    sample = online()
    assert apply_urc(sample, line, 1.0).sample is sample
