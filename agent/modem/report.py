"""What the supervisor tells the rest of the node: the `status()` object (telemetry, the status
page, `agent modem status`) and the small `link` object every event carries.

`PublishedLink` holds the latest `LinkSample` for readers on other threads and wakes those who
wait for a change; the functions below turn it, with what set-up and the ladder know, into JSON.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config.modem import ModemConfig
from agent.events.types import LinkSignal, LinkState
from agent.modem.ladder import RecoveryLadder
from agent.modem.parse import Signal
from agent.modem.port import ModemPort
from agent.modem.sample import LinkSample
from agent.modem.setup import ModemSetup, SetupFacts

log = logging.getLogger(__name__)

# States in which the event's `link.registration` names the problem rather than a registration.
_PROBLEM_STATES = frozenset({"absent", "no_response", "modemmanager", "sim_missing", "sim_locked"})


@dataclass(frozen=True)
class SimContext:
    """What the SIM message needs beyond the sample."""

    pin_rejected: bool = False
    pin_configured: bool = False
    managed: bool = True


def describe(sample: LinkSample, sim: SimContext) -> str:
    """The one-line explanation of the link state (empty when there is nothing to say)."""
    state = sample.state
    if state in ("absent", "modemmanager"):
        return sample.port_message
    if state == "no_response":
        return f"the modem stopped answering ({sample.timeouts} timeouts)"
    if state == "sim_missing":
        return "no SIM card detected"
    if state == "sim_locked":
        if sim.pin_rejected:
            return "the SIM rejected the configured PIN; fix modem.pin (not retried, to avoid a PUK lock)"
        if sample.sim == "SIM PIN" and not sim.pin_configured:
            return "the SIM needs a PIN: set modem.pin"
        if sample.sim == "SIM PIN" and not sim.managed:
            return "the SIM needs its PIN (monitor mode does not enter it)"
        if sample.sim == "SIM PUK":
            return "the SIM is locked (SIM PUK); it needs a PUK from the operator"
        return sample.sim or ""
    if state == "sim_error":
        return f"SIM state {sample.sim}"
    if state == "denied":
        return "registration denied by the network"
    if state == "searching":
        return f"not registered ({sample.registration_state})"
    if state == "not_attached":
        return "registered but not attached for data"
    return ""


def status_report(
    *,
    sample: LinkSample,
    state: str,
    message: str,
    mode: str,
    port: str,
    facts: SetupFacts,
    recovery: dict[str, Any],
    down_s: float | None,
    counters: dict[str, int],
    modemmanager: dict[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The supervisor's `status()`: JSON-ready, a fresh object per call."""
    kind, reg = sample.registration
    status: dict[str, Any] = {
        "state": state,
        "message": message,
        "up": sample.up,
        "mode": mode,
        "port": port,
        "modem": facts.identity.as_dict() if facts.identity is not None else {},
        "sim": {"state": sample.sim, "iccid": facts.iccid},
        "registration": {
            "state": reg.state if reg else None,
            "stat": reg.stat if reg else None,
            "source": kind,
            "area": reg.area if reg else None,
            "cell": reg.cell if reg else None,
        },
        "operator": sample.operator,
        "technology": sample.technology,
        "signal": sample.signal.as_dict(),
        "attached": sample.attached,
        "apn": facts.apn,
        "gnss_enabled": facts.gnss_enabled,
        "down_s": round(down_s, 1) if down_s is not None else None,
        "polled_s_ago": round(now - sample.polled_at, 1) if sample.polled_at else None,
        "recovery": recovery,
        "counters": counters,
    }
    if modemmanager is not None:
        status["modemmanager"] = dict(modemmanager)
    return status


def link_context(sample: LinkSample, state: str, modemmanager: dict[str, Any] | None) -> LinkState:
    """The `link` object of every event: registration (or the reason there is none), technology,
    operator, signal."""
    reg = sample.registration[1]
    registration = reg.state if reg is not None and sample.port == "open" else state
    if state in _PROBLEM_STATES:
        registration = state
    signal = link_signal(sample.signal)
    view = modemmanager or {}
    return {
        "registration": registration,
        "technology": sample.technology or view.get("technology"),
        "operator": sample.operator or view.get("operator"),
        "signal": signal or None,
    }


def link_signal(signal: Signal) -> LinkSignal:
    """`link.signal`: the known values under the names Signal.as_dict() gives them, without `csq`
    (rssi_dbm says the same, in units an operator reads)."""
    out: LinkSignal = {}
    if signal.rssi_dbm is not None:
        out["rssi_dbm"] = signal.rssi_dbm
    if signal.rsrp is not None:
        out["rsrp_dbm"] = signal.rsrp
    if signal.rsrq is not None:
        out["rsrq_db"] = signal.rsrq
    if signal.sinr is not None:
        out["sinr_db"] = signal.sinr
    return out


class PublishedLink:
    """The latest sample, written by the supervisor thread, read by anyone; the lock also guards the
    ladder and set-up facts that status() reads."""

    def __init__(
        self,
        config: ModemConfig,
        *,
        setup: ModemSetup,
        ladder: RecoveryLadder,
        port: ModemPort,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.setup = setup
        self.ladder = ladder
        self.port = port
        self.clock = clock
        self.lock = threading.Condition(threading.RLock())  # notified on every change
        self._sample = LinkSample(at=clock())
        self._modemmanager: dict[str, Any] | None = None  # ModemManager's view while it owns the port
        self._override: tuple[str, str] | None = None  # "failed" or "stopped": the loop's own state
        self._shown_state = "starting"
        self._ever_up = False

    @property
    def sample(self) -> LinkSample:
        return self._sample

    def publish(self, sample: LinkSample, *, why: str = "", modemmanager: dict[str, Any] | None = None) -> None:
        """Make `sample` the link's picture; log what changed that a technician would want to see."""
        with self.lock:
            before, self._sample = self._sample, sample
            self._modemmanager = modemmanager if sample.port == "modemmanager" else None
            state, message = self.state(sample)
            self.lock.notify_all()
        was, now = before.registration_state, sample.registration_state
        if was != now and before.port == sample.port == "open":
            log.info("registration%s: %s → %s", f" ({why})" if why else "", was, now)
        self._ever_up = self._ever_up or sample.up
        if state != self._shown_state:
            self._shown_state = state
            if state != "starting":  # before the first registration, searching is the normal start-up
                level = logging.INFO if state == "online" or not self._ever_up else logging.WARNING
                log.log(level, "modem link: %s%s", state, f" ({message})" if message else "")

    def override(self, state: str | None, message: str = "") -> None:
        """The supervisor's own state (`failed`, `stopped`) over the sample's; None: the sample's."""
        with self.lock:
            self._override = (state, message) if state is not None else None
            self.lock.notify_all()

    @property
    def overridden(self) -> str | None:
        return self._override[0] if self._override is not None else None

    def state(self, sample: LinkSample) -> tuple[str, str]:
        if self._override is not None:
            return self._override
        cfg = self.config
        context = SimContext(self.setup.pin_rejected, bool(cfg.pin), cfg.mode == "managed")
        return sample.state, describe(sample, context)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        with self.lock:
            sample = self._sample
            state, message = self.state(sample)
            down_since = self.ladder.down_since
            return status_report(
                sample=sample,
                state=state,
                message=message,
                mode=self.config.mode,
                port=self.port.label,
                facts=self.setup.facts,
                recovery=self.ladder.status(now),
                down_s=now - down_since if down_since is not None else None,
                counters=self.port.counters(),
                modemmanager=self._modemmanager,
                now=now,
            )

    def link_context(self) -> LinkState:
        with self.lock:
            return link_context(self._sample, self.state(self._sample)[0], self._modemmanager)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """Block until status() satisfies `predicate`; the status, or None on timeout (real time)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                status = self.status()
                if predicate(status):
                    return status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.lock.wait(min(remaining, 0.5))
