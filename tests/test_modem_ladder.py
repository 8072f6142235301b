"""The recovery ladder as a pure decision, walked through failure stories a pole really has.

No thread, serial port or sleep: each story is a world (what the modem looks like at time t, given
the steps taken so far) and a clock that ticks like the supervisor's loop. The ladder sees a
`LinkSample` per tick and says which step to take; the tests assert the steps and their times.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from agent.config.modem import ModemConfig
from agent.modem.ladder import LadderPolicy, RecoveryLadder, StepOutcome
from agent.modem.parse import Registration
from agent.modem.sample import LinkSample

HOME = Registration(stat=1, area="1A2B", cell="01A2B3C4", act=7)
SEARCHING = Registration(stat=2)
DENIED = Registration(stat=3)

# the production defaults: grace 120 s, a step every 90 s, rounds paused up to 30 min
DEFAULTS = ModemConfig()


def online(t: float) -> LinkSample:
    return LinkSample(at=t, port="open", sim="READY", cereg=HOME, attached=True, polled_at=t)


def searching(t: float) -> LinkSample:
    return LinkSample(at=t, port="open", sim="READY", cereg=SEARCHING, polled_at=t)


def silent(t: float) -> LinkSample:
    """The modem stopped answering: three AT timeouts in a row."""
    return LinkSample(at=t, port="open", sim="READY", cereg=HOME, timeouts=3, unresponsive=True)


def absent(t: float) -> LinkSample:
    return LinkSample(at=t, port="absent", port_message="port /dev/vigil-at gone", sim="READY", cereg=HOME)


def sim_locked(t: float) -> LinkSample:
    return LinkSample(at=t, port="open", sim="SIM PIN")


def modemmanager(t: float) -> LinkSample:
    return LinkSample(at=t, port="modemmanager", port_message="ModemManager is using /dev/ttyUSB2")


@dataclass
class Story:
    """Drives a ladder through a world, one evaluation per `tick_s`, like the supervisor's loop."""

    ladder: RecoveryLadder
    world: Callable[[float, list[str]], LinkSample]
    step_s: float = 2.0  # how long performing a step takes
    tick_s: float = 1.0
    taken: list[tuple[float, str]] = field(default_factory=list)

    def run(self, until: float, start: float = 0.0) -> Story:
        t = start
        while t <= until:
            step = self.ladder.evaluate(t, self.world(t, [s for _, s in self.taken]))
            if step is not None:
                self.taken.append((t, step))
                self.ladder.record(step, StepOutcome(finished_at=t + self.step_s))
                t += self.step_s
            t += self.tick_s
        return self

    @property
    def steps(self) -> list[str]:
        return [s for _, s in self.taken]


def ladder(*, power_cycle: bool = False, config: ModemConfig = DEFAULTS) -> RecoveryLadder:
    return RecoveryLadder(LadderPolicy.from_config(config, power_cycle=power_cycle))


def test_a_booting_modem_is_given_its_grace_and_counted_as_first_registration():
    lad = ladder()
    story = Story(lad, lambda t, _: searching(t) if t < 100 else online(t)).run(until=300)
    assert story.steps == []  # 100 s of searching after boot is within the 120 s grace
    assert lad.last_recovery is None and [h["step"] for h in lad.history] == ["up"]
    assert lad.down_since is None and lad.next_step is None


def test_registration_lost_for_minutes_climbs_one_step_per_wait_until_the_radio_cycle_cures_it():
    lad = ladder()

    def world(t: float, steps: list[str]) -> LinkSample:
        if t < 60 or "radio_cycle" in steps:
            return online(t)
        return searching(t)  # the cell went away at t=60 and the radio stays stuck

    story = Story(lad, world).run(until=1000)
    # grace 120 s after the loss; the next step 90 s after the requery ended (it took 2 s)
    assert story.taken == [(180.0, "requery"), (272.0, "radio_cycle")]
    assert lad.last_recovery == {"after_step": "radio_cycle", "down_s": 215.0}  # up at the first look after it
    assert lad.counts == {"requery": 1, "radio_cycle": 1, "reset": 0, "power_cycle": 0, "reopen": 0}
    assert [h["step"] for h in lad.history] == ["up", "requery", "radio_cycle", "recovered"]


def test_a_silent_modem_gets_no_grace():
    lad = ladder()
    story = Story(lad, lambda t, steps: online(t) if t < 10 or "requery" in steps else silent(t)).run(until=60)
    assert story.taken == [(11.0, "requery")]  # the outage starts at 10, the step at the very next look
    assert lad.last_recovery == {"after_step": "requery", "down_s": 4.0}


def test_a_hung_modem_that_only_a_power_cut_cures_gets_every_step_then_the_power_cycle():
    lad = ladder(power_cycle=True)

    def world(t: float, steps: list[str]) -> LinkSample:
        if t < 10:
            return online(t)
        if "power_cycle" not in steps:
            return silent(t)  # no answer to anything, whatever is tried over AT
        cut = next(at for at, step in story.taken if step == "power_cycle")
        return absent(t) if t < cut + 30 else online(t)  # the USB device re-enumerates after the cut

    story = Story(lad, world)
    story.run(until=800)
    assert story.steps == ["requery", "radio_cycle", "reset", "power_cycle"]
    times = [t for t, _ in story.taken]
    assert [b - a for a, b in itertools.pairwise(times)] == [92.0, 92.0, 92.0]  # no grace; 90 s after each 2 s step
    assert lad.last_recovery is not None and lad.last_recovery["after_step"] == "power_cycle"
    assert lad.counts["power_cycle"] == 1 and lad.rounds == 0


def test_a_port_that_stays_away_is_only_power_cycled():
    lad = ladder(power_cycle=True)
    story = Story(lad, lambda t, _: online(t) if t < 5 else absent(t)).run(until=400)
    # no AT step can reach an absent port; the power cycle is the one step, then rounds with pauses
    assert set(story.steps) == {"power_cycle"}
    assert story.taken[0] == (125.0, "power_cycle")  # a vanished port gets the grace (USB re-enumeration)


def test_without_a_cure_rounds_pause_longer_each_time_up_to_the_cap():
    lad = ladder(config=ModemConfig(step_wait_s=90, retry_max_s=600))
    story = Story(lad, lambda t, _: online(t) if t < 1 else silent(t), step_s=5.0).run(until=6 * 3600)
    rounds = [t for t, step in story.taken if step == "requery"]
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    # a round: three steps, each 5 s long and followed by the 90 s wait; then a pause of 90, 180, 360,
    # 600, 600 s…
    round_s = 3 * 95
    assert gaps[:5] == [round_s + 90, round_s + 180, round_s + 360, round_s + 600, round_s + 600]
    assert set(gaps[3:]) == {round_s + 600}  # capped: it never spins, and never gives up
    assert lad.rounds == len(rounds) and lad.next_step in ("requery", "radio_cycle", "reset", "pause")
    assert len(story.taken) < 6 * 3600 / 600 * 3 + 3  # bounded work over six hours


def test_recovery_resets_the_ladder_for_the_next_outage():
    lad = ladder()

    def world(t: float, steps: list[str]) -> LinkSample:
        if t < 10 or 500 <= t < 600:
            return online(t)
        if t < 500:
            return searching(t) if steps.count("requery") < 1 else online(t)
        return searching(t) if steps.count("requery") < 2 else online(t)

    story = Story(lad, world).run(until=1000)
    assert story.steps == ["requery", "requery"]  # each outage starts from the bottom rung again
    assert lad.rounds == 0 and lad.last_recovery == {"after_step": "requery", "down_s": 123.0}


def test_a_locked_sim_and_modemmanager_are_reported_never_reset():
    for world in (sim_locked, modemmanager):
        lad = ladder(power_cycle=True)
        story = Story(lad, lambda t, _, w=world: w(t)).run(until=3 * 3600, start=0)
        assert story.steps == [] and lad.down_since is None and lad.counts["reset"] == 0


def test_monitor_mode_only_requeries():
    lad = ladder(power_cycle=True, config=ModemConfig(mode="monitor", step_wait_s=30, retry_max_s=60))
    story = Story(lad, lambda t, _: searching(t)).run(until=2000)
    assert story.steps and set(story.steps) == {"requery"}


def test_a_denied_registration_climbs_the_ladder_too():
    lad = ladder()
    story = Story(lad, lambda t, _: LinkSample(at=t, port="open", sim="READY", cereg=DENIED)).run(until=200)
    assert story.steps == ["requery"]  # denied for longer than the grace: worth a fresh look


def test_no_second_step_while_one_is_in_flight_and_outcomes_must_match():
    lad = ladder()
    lad.evaluate(0.0, silent(0.0))
    assert lad.evaluate(1.0, silent(1.0)) == "requery"
    assert lad.evaluate(500.0, silent(500.0)) is None  # the requery has not been recorded yet
    with pytest.raises(ValueError, match="in flight is requery"):
        lad.record("reset", StepOutcome(finished_at=2.0))
    lad.record("requery", StepOutcome(finished_at=2.0, ok=False, detail="AT+CPIN?: no answer"))
    assert lad.due_in(2.0) == pytest.approx(90.0)
    assert lad.evaluate(92.0, silent(92.0)) == "radio_cycle"


def test_status_shape_and_counts_of_actions_the_ladder_did_not_choose():
    lad = ladder()
    lad.count("reopen", "/dev/vigil-at is back", 5.0)
    lad.count("reset", "requested", 6.0)
    lad.evaluate(7.0, searching(7.0))
    status = lad.status(10.0)
    assert status["counts"] == {"requery": 0, "radio_cycle": 0, "reset": 1, "power_cycle": 0, "reopen": 1}
    assert status["next_step"] == "requery" and status["next_step_in_s"] == 117.0
    assert status["round"] == 0 and status["last_step"] is None and status["last_recovery"] is None
    assert [h["step"] for h in status["history"]] == ["reopen", "reset"]
