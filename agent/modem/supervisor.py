"""The LTE link supervisor: one named thread that keeps the modem registered and attached, and says
how the link is.

It is the thin loop over the parts that do the work:

- `ModemPort` (port.py): ModemManager arbitration, opening, the AT engine, URCs;
- `ModemSetup` (setup.py): identity, SIM and PIN, URCs, APN, radio, GNSS after every (re)open/boot;
- `Poller` (poller.py): one frozen `LinkSample` per poll; `apply_urc` (sample.py) between polls;
- `RecoveryLadder` (ladder.py): which recovery step to take and when, a pure decision;
- `PublishedLink` (report.py): the latest sample for other threads, `status()`, the events' `link`.

Each pass (`tick()`) reopens a lost port, folds in URCs, polls when due, asks the ladder and
performs the step it chooses. Time comes from the injected `monotonic` clock, so tests drive the
loop pass by pass; nothing spins: failing opens back off to `reopen_max_s`, and a hung modem costs
one command timeout per poll.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent.config.modem import ModemConfig
from agent.events.types import LinkState
from agent.lifecycle import BackgroundLoop, remaining
from agent.modem.at import AtError, AtTimeout, PortClosed, SerialLike
from agent.modem.ladder import LadderPolicy, RecoveryLadder, RecoveryStep, StepOutcome
from agent.modem.mm import PortUsers, mmcli_status, port_users
from agent.modem.poller import Poller
from agent.modem.port import ModemPort
from agent.modem.power import shell_power_cycle
from agent.modem.report import PublishedLink
from agent.modem.sample import REBOOT_URCS, LinkSample, apply_urc
from agent.modem.setup import ModemSetup, attempt, read_sim
from agent.modem.vendors import Vendor
from agent.urls import scrub_userinfo

log = logging.getLogger(__name__)

STOP_WITHIN_S = 3.0  # stop() without a deadline


@dataclass(frozen=True)
class Pause:
    """How long the loop rests after a pass, and whether a URC may cut the rest short."""

    seconds: float
    wake_on_urc: bool = True


class LinkSupervisor:
    """Owns the modem's AT port and the `NAME-supervisor` thread: `start()`, `stop(deadline)`,
    `status()` like every stage."""

    def __init__(
        self,
        config: ModemConfig,
        *,
        opener: Callable[[], SerialLike] | None = None,
        power_cycle: Callable[[], bool] | None = None,
        gnss_via_modem: bool = False,
        users_probe: Callable[[str], PortUsers] | None = port_users,
        mm_probe: Callable[[], dict[str, Any] | None] = mmcli_status,
        name: str = "modem",
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._clock = monotonic
        self._loop = BackgroundLoop(f"{name}-supervisor", self._run)
        self._stop = self._loop.stopping
        self._wake = threading.Event()
        self._sleep = sleep or self._stop.wait  # pauses inside a step (radio off, then on)
        if power_cycle is None and config.power_cycle_command:
            power_cycle = shell_power_cycle(config.power_cycle_command, config.power_cycle_timeout_s, self._stop)
        self._power_cycle = power_cycle
        self.port = ModemPort(
            config, name=name, opener=opener, users_probe=users_probe, mm_probe=mm_probe, wake=self._wake.set
        )
        self.port_label = self.port.label
        self.setup = ModemSetup(config, gnss_via_modem=gnss_via_modem)
        self.poller = Poller(monotonic)
        self.ladder = RecoveryLadder(LadderPolicy.from_config(config, power_cycle=power_cycle is not None))
        self.link = PublishedLink(config, setup=self.setup, ladder=self.ladder, port=self.port, clock=monotonic)
        self._reset_requested = False
        self._needs_setup = True
        self._poll_soon = False
        self._first_wait = min(1.0, config.reopen_max_s)
        self._reopen_wait = self._first_wait
        self._next_poll = -math.inf

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> LinkSupervisor:
        if self._loop.started:
            raise RuntimeError("the modem supervisor is already started")
        self._loop.start()
        return self

    def request_stop(self) -> None:
        """Tell the thread to stop and fail the AT command in flight, without waiting (see stop())."""
        self._loop.request_stop()
        self._wake.set()
        engine = self.port.engine
        if engine is not None:
            engine.abort()

    def stop(self, deadline: float | None = None) -> None:
        """Stop the thread and close the port by `deadline` (a `time.monotonic()` instant shared by
        the stages stopping together; default: `STOP_WITHIN_S` from now)."""
        deadline = time.monotonic() + STOP_WITHIN_S if deadline is None else deadline
        self._loop.request_stop()
        self._wake.set()
        engine = self.port.engine
        if engine is not None:  # fails a command in flight at once, so the thread is not stuck in a timeout
            engine.stop(timeout=min(2.0, remaining(deadline)))
        self._loop.join(deadline)
        self.link.override("stopped")

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    def request_reset(self) -> None:
        """Ask for a full modem reset (the control plane's `modem/reset`); the supervisor thread runs it,
        counted and noted like a recovery step. Raises RuntimeError when it cannot be done now."""
        if self.config.mode != "managed":
            raise RuntimeError("modem.mode is monitor: the agent does not write to the modem")
        if self.port.engine is None:
            raise RuntimeError(
                f"the modem is not reachable ({self.status().get('state')}); the supervisor keeps retrying"
            )
        self._reset_requested = True
        self._wake.set()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """Block until status() satisfies `predicate`; the status, or None on timeout (real time)."""
        return self.link.wait_for(predicate, timeout)

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self, _loop: BackgroundLoop) -> None:
        """The thread: passes and rests until stopped; a bug that escapes a pass restarts the loop."""
        try:
            while not self._stop.is_set():
                try:
                    pause = self.tick()
                except Exception:
                    log.exception("modem supervisor failed; restarting it in 5 s")
                    self._fail()
                    self._stop.wait(5.0)
                    continue
                self._rest(pause)
        finally:
            self.port.drop()

    def tick(self) -> Pause:
        """One pass: reopen a lost port, fold in URCs, run a requested reset, poll when due, and take
        the recovery step the ladder chooses. Returns how long to rest before the next pass."""
        if self.link.overridden == "failed":
            self.link.override(None)  # the loop runs again
        lost = self.port.lost
        if lost is not None:
            self._drop(lost)
        if self.port.engine is None:
            if not self._open():
                self._recover()
                cfg = self.config
                wait = self._reopen_wait if self.link.sample.port != "modemmanager" else cfg.poll_interval_s
                self._reopen_wait = min(self._reopen_wait * 2, cfg.reopen_max_s)
                return Pause(wait * random.uniform(0.9, 1.1), wake_on_urc=False)
            self._reopen_wait = self._first_wait
            self._next_poll = -math.inf
        self._drain_urcs()
        if self._reset_requested:
            self._reset_requested = False
            with self.link.lock:
                self.ladder.count("reset", "requested", self._clock())
            try:
                self._perform("reset")
            except (AtTimeout, PortClosed, AtError) as exc:
                log.warning("requested reset failed: %s", exc)
        now = self._clock()
        if self._poll_soon:
            self._poll_soon = False
            self._next_poll = min(self._next_poll, now)
        if now >= self._next_poll:
            try:
                self._poll()
            except PortClosed:
                return Pause(0.0, wake_on_urc=False)
            self._next_poll = self._clock() + self.config.poll_interval_s
        self._recover()
        now = self._clock()
        wait = max(0.0, self._next_poll - now)
        step_due = self.ladder.due_in(now)
        if step_due is not None:
            wait = min(wait, max(0.05, step_due))
        return Pause(wait)

    def _rest(self, pause: Pause) -> None:
        if not pause.wake_on_urc:
            self._stop.wait(pause.seconds)
            return
        self._wake.wait(pause.seconds)
        self._wake.clear()

    def _fail(self) -> None:
        self.port.drop()
        self.link.override("failed", "the modem supervisor hit a bug; see the log")
        gone = f"port {self.port.label} gone: supervisor restart"
        self.link.publish(self.link.sample.closed(self._clock(), "absent", gone))
        self._reopen_wait = self._first_wait

    # -- the port -----------------------------------------------------------------------------------
    def _open(self) -> bool:
        refusal = self.port.open()
        now = self._clock()
        if refusal is not None:
            self.link.publish(self.link.sample.closed(now, refusal.port, refusal.message), modemmanager=refusal.view)
            return False
        if self.port.opens > 1:
            with self.link.lock:
                self.ladder.count("reopen", f"{self.port.label} is back", now)
        self._needs_setup = True
        self.link.publish(LinkSample(at=now, port="open"))  # a new session: nothing known about it yet
        try:
            self._run_setup()
        except PortClosed:
            return False
        return True

    def _drop(self, reason: str) -> None:
        self.port.drop()
        message = scrub_userinfo(f"port {self.port.label} gone: {reason}")
        self.link.publish(self.link.sample.closed(self._clock(), "absent", message))

    # -- set-up and polling ---------------------------------------------------------------------------
    def _run_setup(self) -> None:
        engine = self.port.engine
        if engine is None:
            return
        try:
            sim = self.setup.run(engine)
        except AtTimeout:
            self._count_timeout()
            return
        self._needs_setup = False
        self.link.publish(replace(self.link.sample, at=self._clock(), sim=sim, timeouts=0, unresponsive=False))

    def _poll(self) -> None:
        engine = self.port.engine
        if engine is None:
            return
        try:
            if self.link.sample.unresponsive:
                if not engine.ping(timeout=min(2.0, self.config.command_timeout_s)):
                    return
                log.warning("modem answers again")
                self._answered()
                self._needs_setup = True
            if self._needs_setup:
                self._run_setup()
                if self.link.sample.unresponsive:
                    return
            sim = self.setup.settle_sim(engine, read_sim(engine))
            if self.setup.incomplete(sim):
                self._run_setup()
                if self.link.sample.unresponsive:
                    return
            sample = self.poller.poll(engine, self.setup.vendor, sim)
        except AtTimeout:
            self._count_timeout()
            return
        self.link.publish(sample)

    def _count_timeout(self) -> None:
        sample = self.link.sample
        timeouts = sample.timeouts + 1
        unresponsive = sample.unresponsive or timeouts >= self.config.unresponsive_after
        if unresponsive and not sample.unresponsive:
            self._needs_setup = True
            log.error("the modem stopped answering (%d commands timed out)", timeouts)
        self.link.publish(replace(sample, at=self._clock(), timeouts=timeouts, unresponsive=unresponsive))

    def _answered(self) -> None:
        self.link.publish(replace(self.link.sample, at=self._clock(), timeouts=0, unresponsive=False))

    def _drain_urcs(self) -> None:
        for line in self.port.take_urcs():
            if line in REBOOT_URCS:
                log.info("modem (re)booted (%s)", line)
            effect = apply_urc(self.link.sample, line, self._clock())
            if effect.warning:
                log.warning("%s", effect.warning)
            self._poll_soon = self._poll_soon or effect.poll_soon
            self._needs_setup = self._needs_setup or effect.needs_setup
            if effect.sample is not self.link.sample:
                self.link.publish(effect.sample, why="URC")

    # -- recovery -----------------------------------------------------------------------------------
    def _recover(self) -> None:
        with self.link.lock:
            step = self.ladder.evaluate(self._clock(), self.link.sample)
        if step is None:
            return
        ok, detail = False, "the step did not finish"
        try:
            ok = self._perform(step)
            detail = "" if ok else "the power-cycle command failed"
        except (AtTimeout, PortClosed, AtError) as exc:
            detail = str(exc)
            if isinstance(exc, AtTimeout):
                self._count_timeout()
        finally:
            with self.link.lock:
                self.ladder.record(step, StepOutcome(self._clock(), ok, detail))
                self.link.lock.notify_all()

    def _perform(self, step: RecoveryStep) -> bool:
        """Carry out one step; False when it could not be done. AT failures propagate."""
        engine = self.port.engine
        # a modem that stopped answering gets the ordinary timeout, not the documented maximum
        limit = self.config.command_timeout_s if self.link.sample.unresponsive else None
        if step == "requery":
            if engine is not None:
                if self.link.sample.unresponsive:
                    if engine.ping(timeout=min(2.0, self.config.command_timeout_s)):
                        self._answered()
                        self._needs_setup = True
                else:
                    self._needs_setup = True
                    if self.link.sample.state == "not_attached":
                        attempt(engine, "AT+CGATT=1")  # registered but no packet attach: ask for it
                self._poll()
        elif step == "radio_cycle" and engine is not None:
            engine.command("AT+CFUN=0", timeout=limit)
            self._sleep(min(2.0, self.config.step_wait_s / 4))
            engine.command("AT+CFUN=1", timeout=limit)
            self._needs_setup = True
        elif step == "reset" and engine is not None:
            self._needs_setup = True
            (self.setup.vendor or Vendor()).reset(engine, timeout=limit)
        elif step == "power_cycle" and self._power_cycle is not None:
            if engine is not None:
                self._drop("power cycle")
            ok = self._power_cycle()
            log.warning("power cycle %s", "done" if ok else "failed")
            return ok
        return True

    # -- one-shot use (`agent modem status`, hardware checks) -------------------------------------
    def survey(self) -> dict[str, Any]:
        """Open, identify, read SIM, registration, operator, signal, attach and GNSS once, close.

        Runs on the caller's thread; in monitor mode (what the CLI uses) nothing is written to the
        modem. Returns the same shape as status().
        """
        try:
            if self._open():
                self._poll()
                engine = self.port.engine
                if engine is not None and not self.link.sample.unresponsive:
                    self.setup.check_gnss(engine)
        except (PortClosed, AtTimeout):
            pass
        result = self.status()
        self.port.drop()
        return result

    # -- what the rest of the node reads ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The link as telemetry and `agent modem status` show it (JSON-ready, a copy)."""
        return self.link.status()

    def link_context(self) -> LinkState:
        """The `link` object of every event: registration, technology, operator, signal."""
        return self.link.link_context()
