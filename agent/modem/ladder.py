"""The recovery ladder: which step to take against a dead link, and when. Pure: no threads, no
serial port, no sleeping, no clock of its own.

The supervisor shows it each new `LinkSample` with the time (`evaluate(now, sample)`); when it
answers a step, the supervisor performs it and reports back (`record(step, outcome)`). The link is
down when the SIM is not ready, the modem is not registered or not attached, it stopped answering
or its port vanished. After `recovery_grace_s` (at once for a silent modem) one step runs per
`step_wait_s`, counted from the end of the previous one:

1. `requery`: set the modem up again and poll (and ask for packet attach if that is what lacks);
2. `radio_cycle`: `AT+CFUN=0`, `AT+CFUN=1`;
3. `reset`: a full modem reboot (`AT+CFUN=1,1`, SIMCom `AT+CRESET`);
4. `power_cycle`: `modem.power_cycle_command`, when there is one.

When every step has failed the ladder pauses, `step_wait_s` doubled per round up to
`retry_max_s`, then starts over. A port that cannot be opened leaves only the power cycle; monitor
mode only re-queries. ModemManager owning the port and a locked SIM are never "recovered": a
reset would not help, a person must act.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from agent.config.modem import ModemConfig
from agent.modem.sample import LinkSample

log = logging.getLogger(__name__)

RecoveryStep = Literal["requery", "radio_cycle", "reset", "power_cycle"]
STEPS: tuple[RecoveryStep, ...] = ("requery", "radio_cycle", "reset", "power_cycle")
COUNTED = (*STEPS, "reopen")  # status counts every step, and every reopened port
NO_RECOVERY = frozenset({"modemmanager", "sim_locked"})  # states a reset cannot cure


@dataclass(frozen=True)
class LadderPolicy:
    """The ladder's thresholds (from `[modem]`) and which steps this node can take."""

    grace_s: float = 120.0
    step_wait_s: float = 90.0
    retry_max_s: float = 1800.0
    managed: bool = True  # monitor mode writes nothing: it can only re-query
    power_cycle: bool = False  # a power-cycle command (GPIO, USB hub) is configured

    @classmethod
    def from_config(cls, config: ModemConfig, *, power_cycle: bool) -> LadderPolicy:
        return cls(
            grace_s=config.recovery_grace_s,
            step_wait_s=config.step_wait_s,
            retry_max_s=config.retry_max_s,
            managed=config.mode == "managed",
            power_cycle=power_cycle,
        )

    def steps(self, port_open: bool) -> tuple[RecoveryStep, ...]:
        if not self.managed:
            return ("requery",)
        if not port_open:
            return ("power_cycle",) if self.power_cycle else ()
        return STEPS if self.power_cycle else STEPS[:3]

    def pause_after_round(self, rounds: int) -> float:
        return min(self.step_wait_s * 2.0 ** (rounds - 1), self.retry_max_s)


@dataclass(frozen=True)
class StepOutcome:
    """How a step went, reported back with `record`. `finished_at`: when it returned."""

    finished_at: float
    ok: bool = True
    detail: str = ""


class RecoveryLadder:
    """State of the current outage and the tally of every step, for `status()`."""

    def __init__(self, policy: LadderPolicy, *, history: int = 20) -> None:
        self.policy = policy
        self.counts: dict[str, int] = dict.fromkeys(COUNTED, 0)
        self.rounds = 0
        self.last_step: dict[str, Any] | None = None
        self.last_recovery: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.down_since: float | None = None
        self._ever_up = False
        self._step_index = 0
        self._next_step_at = 0.0
        self._outage_step: RecoveryStep | None = None  # the last step taken in this outage
        self._in_flight: RecoveryStep | None = None
        self._port_open = True

    # -- the decision ---------------------------------------------------------------------------------
    def evaluate(self, now: float, sample: LinkSample) -> RecoveryStep | None:
        """The step to take now, or None. A returned step is counted; `record` its outcome."""
        self._port_open = sample.port == "open"
        state = sample.state
        if state in NO_RECOVERY:
            self.down_since = None  # nothing a reset could fix; say so and wait for a person
            return None
        if sample.up:
            self._link_up(now)
            return None
        if self.down_since is None:
            self.down_since = now
            self._step_index = 0
            self._outage_step = None
            self._next_step_at = now + (0.0 if sample.unresponsive else self.policy.grace_s)
            return None
        if self._in_flight is not None or now < self._next_step_at:
            return None
        steps = self.policy.steps(self._port_open)
        if self._step_index >= len(steps):
            self._exhausted(now, state, bool(steps))
            return None
        step = steps[self._step_index]
        self._step_index += 1
        self.counts[step] += 1
        self._outage_step = step
        self._in_flight = step
        self.last_step = {"step": step, "mono": round(now, 3)}
        log.warning("modem link down for %.0fs (%s): recovery step %s", now - self.down_since, state, step)
        self.note(step, state, now)
        return step

    def record(self, step: RecoveryStep, outcome: StepOutcome) -> None:
        """The step returned: the next one waits `step_wait_s` from now, whatever it did."""
        if step != self._in_flight:
            raise ValueError(f"recorded {step}, but the step in flight is {self._in_flight}")
        self._in_flight = None
        if not outcome.ok:
            log.warning("recovery step %s failed%s", step, f": {outcome.detail}" if outcome.detail else "")
        self._next_step_at = outcome.finished_at + self.policy.step_wait_s

    def count(self, kind: str, detail: str, now: float) -> None:
        """Tally an action the ladder did not choose: a reopened port, a reset asked for by an operator."""
        self.counts[kind] += 1
        self.note(kind, detail, now)

    def note(self, kind: str, detail: str, now: float) -> None:
        self.history.append({"step": kind, "detail": detail, "mono": round(now, 3)})

    def _link_up(self, now: float) -> None:
        recovered = self.down_since is not None and (self._ever_up or self._outage_step is not None)
        if not recovered and not self._ever_up:
            self.note("up", "first registration", now)
        self._ever_up = True
        if recovered and self.down_since is not None:
            down_s = now - self.down_since
            step = self._outage_step
            self.last_recovery = {"after_step": step, "down_s": round(down_s, 1)}
            log.info("modem link up again after %.0fs (last step: %s)", down_s, step or "none")
            self.note("recovered", f"after {step or 'no step'}", now)
        self.down_since = None
        self._step_index = 0
        self.rounds = 0

    def _exhausted(self, now: float, state: str, had_steps: bool) -> None:
        assert self.down_since is not None
        self.rounds += 1
        pause = self.policy.pause_after_round(self.rounds)
        down_s = now - self.down_since
        if had_steps:
            log.error(
                "modem link down for %.0fs and every recovery step failed (round %d); starting over in %.0fs",
                down_s,
                self.rounds,
                pause,
            )
        else:
            why = "monitor mode" if not self.policy.managed else "no power_cycle_command"
            log.error(
                "modem link down for %.0fs (%s); no recovery step applies here (%s), still retrying",
                down_s,
                state,
                why,
            )
        self.note("exhausted", f"round {self.rounds}", now)
        self._step_index = 0
        self._next_step_at = now + pause

    def due_in(self, now: float) -> float | None:
        """Seconds until the ladder has something to decide (None: the link is not down)."""
        return None if self.down_since is None else self._next_step_at - now

    # -- reporting ------------------------------------------------------------------------------------
    @property
    def next_step(self) -> str | None:
        """The step the ladder would take next in this outage, `pause` between rounds, None when up."""
        if self.down_since is None:
            return None
        steps = self.policy.steps(self._port_open)
        return steps[self._step_index] if self._step_index < len(steps) else "pause"

    def status(self, now: float) -> dict[str, Any]:
        """The `recovery` object of the supervisor's status (JSON-ready copies)."""
        waiting = self.down_since is not None
        return {
            "counts": dict(self.counts),
            "round": self.rounds,
            "next_step": self.next_step,
            "next_step_in_s": round(max(0.0, self._next_step_at - now), 1) if waiting else None,
            "last_step": dict(self.last_step) if self.last_step is not None else None,
            "last_recovery": dict(self.last_recovery) if self.last_recovery is not None else None,
            "history": [dict(item) for item in self.history],
        }
