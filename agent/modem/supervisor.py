"""The LTE link supervisor: keeps the modem registered and attached, and says how the link is.

One named thread owns the AT engine. It opens the port (unless ModemManager owns it), identifies the
modem, unlocks the SIM, sets the APN, then polls registration, operator, signal and attach, and
reacts to URCs between polls. When the link stays down it climbs a recovery ladder, one step per
`step_wait_s`: re-query → radio off/on (+CFUN=0/1) → modem reset (+CFUN=1,1 or the vendor's) → the
configured power-cycle command → report and start over after a pause that doubles up to
`retry_max_s`. Every step is counted; nothing spins: failing opens back off to `reopen_max_s`, and
a hung modem costs one command timeout per poll.

`status()` is the full picture for telemetry and `agent modem status`; `link_context()` is the
small `link` object every event carries.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.config.modem import ModemConfig
from agent.modem.at import AtEngine, AtError, AtTimeout, PortClosed, SerialLike, open_port
from agent.modem.mm import PortUsers, is_device_path, mmcli_status, port_users
from agent.modem.parse import (
    Registration,
    Signal,
    parse_cgdcont,
    parse_cops,
    parse_cpin,
    parse_csq,
    parse_registration,
    text_field,
)
from agent.modem.vendors import Vendor, choose_vendor
from agent.urls import hide_userinfo, scrub_userinfo

log = logging.getLogger(__name__)

REG_KINDS = ("CEREG", "CGREG", "CREG")  # preference order: LTE (EPS), packet, circuit
STEPS = ("requery", "radio_cycle", "reset", "power_cycle")
_URC_QUEUE = 256


def shell_power_cycle(
    command: str, timeout_s: float, stop: threading.Event | None = None
) -> Callable[[], bool]:
    """The configured power-cycle command (GPIO line, USB hub port) as a callable.

    It runs in its own process group and is killed on timeout or when `stop` is set, so a stuck
    relay script can neither block the supervisor nor outlive the agent.
    """

    def run() -> bool:
        try:
            proc = subprocess.Popen(
                command,
                shell=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("power-cycle command could not run: %s", exc)
            return False
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if time.monotonic() > deadline:
                    log.error("power-cycle command did not finish within %.0fs; killed", timeout_s)
                return False
            if stop is not None:
                stop.wait(0.05)
            else:
                time.sleep(0.05)
        output = (proc.stdout.read() if proc.stdout else "").strip().splitlines()
        if proc.returncode != 0:
            log.error("power-cycle command exited with %d %s", proc.returncode, output[-1] if output else "")
            return False
        return True

    return run


class LinkSupervisor:
    """Owns the modem's AT port and the `modem-supervisor` thread; start()/stop() like a stage."""

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
    ) -> None:
        self.config = config
        self.name = name
        self.port_label = hide_userinfo(config.port)  # what logs and status show (rfc2217://user:pw@…)
        self._opener = opener or (lambda: open_port(config.port, config.baudrate))
        self._stop = threading.Event()
        if power_cycle is None and config.power_cycle_command:
            power_cycle = shell_power_cycle(
                config.power_cycle_command, config.power_cycle_timeout_s, self._stop
            )
        self._power_cycle = power_cycle
        self._gnss_via_modem = gnss_via_modem
        self._users_probe = users_probe
        self._mm_probe = mm_probe
        self._wake = threading.Event()
        self._reset_requested = False
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # guards the published state below
        self._changed = threading.Condition(self._lock)  # notified whenever the state may have moved
        self._at: AtEngine | None = None
        self._vendor: Vendor | None = None
        self._urcs: deque[str] = deque(maxlen=_URC_QUEUE)
        self._urcs_dropped = 0
        self._pin_rejected = False
        self._needs_setup = True
        self._timeouts = 0
        self._unresponsive = False
        self._poll_soon = False
        self._setup_sim_state: str | None = None  # SIM state the last complete set-up saw
        self._ever_up = False
        self._mm_warned = False
        self._others_warned = False
        # link state
        self._state = "starting"
        self._message = ""
        self._modem: dict[str, Any] = {}
        self._sim: dict[str, Any] = {"state": None, "iccid": None}
        self._regs: dict[str, Registration | None] = dict.fromkeys(REG_KINDS)
        self._operator: str | None = None
        self._op_tech: str | None = None
        self._signal = Signal()
        self._attached: bool | None = None
        self._apn: str | None = None
        self._gnss_enabled: bool | None = None
        self._mm_view: dict[str, Any] | None = None
        self._last_poll_mono: float | None = None
        # recovery
        self._down_since: float | None = None
        self._step_index = 0
        self._next_step_at = 0.0
        self._rounds = 0
        self._counts = dict.fromkeys((*STEPS, "reopen"), 0)
        self._last_step: dict[str, Any] | None = None
        self._outage_step: str | None = None  # the last step taken in the current outage
        self._last_recovery: dict[str, Any] | None = None
        self._opens = 0
        self._events: deque[dict[str, Any]] = deque(maxlen=20)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> LinkSupervisor:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._wake.set()
        at = self._at
        if at is not None:
            at.stop()  # fails a command in flight at once, so the thread is not stuck in a timeout
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("modem supervisor did not stop within %.1fs", timeout)
        with self._lock:
            self._state = "stopped"
        self._notify()

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    def request_reset(self) -> None:
        """Ask for a full modem reset (the control plane's `modem/reset`); the supervisor thread runs it,
        counted and noted like a recovery step. Raises RuntimeError when it cannot be done now."""
        if self.config.mode != "managed":
            raise RuntimeError("modem.mode is monitor: the agent does not write to the modem")
        if self._at is None:
            raise RuntimeError(
                f"the modem is not reachable ({self.status().get('state')}); the supervisor keeps retrying"
            )
        self._reset_requested = True
        self._wake.set()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """Block until status() satisfies `predicate`; the status, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                status = self.status()
                if predicate(status):
                    return status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.5))

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        """The thread: the loop, restarted after a pause should a bug ever escape it."""
        try:
            while not self._stop.is_set():
                try:
                    self._loop()
                except Exception:
                    log.exception("modem supervisor failed; restarting it in 5 s")
                    self._set_state("failed", "the modem supervisor hit a bug; see the log")
                    if self._at is not None:
                        self._drop_engine("supervisor restart")
                    self._stop.wait(5.0)
        finally:
            if self._at is not None:
                self._at.stop()
                self._at = None

    def _loop(self) -> None:
        first_wait = min(1.0, self.config.reopen_max_s)
        reopen_wait = first_wait
        next_poll = 0.0
        while not self._stop.is_set():
            if self._at is None or self._at.closed:
                if self._at is not None:
                    self._drop_engine(self._at.closed_reason or "closed")
                if not self._open():
                    self._evaluate(time.monotonic())
                    self._notify()
                    wait = reopen_wait if self._state != "modemmanager" else self.config.poll_interval_s
                    reopen_wait = min(reopen_wait * 2, self.config.reopen_max_s)
                    self._sleep(wait * random.uniform(0.9, 1.1), wake_on_urc=False)
                    continue
                reopen_wait = first_wait
                next_poll = 0.0
            self._drain_urcs()
            if self._reset_requested:
                self._reset_requested = False
                self._counts["reset"] += 1
                self._note("reset", "requested")
                try:
                    self._run_step("reset")
                except (AtTimeout, PortClosed, AtError) as exc:
                    log.warning("requested reset failed: %s", exc)
            now = time.monotonic()
            if self._poll_soon:
                self._poll_soon = False
                next_poll = min(next_poll, now)
            if now >= next_poll:
                try:
                    self._poll()
                except PortClosed:
                    continue
                next_poll = time.monotonic() + self.config.poll_interval_s
            self._evaluate(time.monotonic())
            self._notify()
            wait = max(0.0, next_poll - time.monotonic())
            if self._down_since is not None:
                wait = min(wait, max(0.05, self._next_step_at - time.monotonic()))
            self._sleep(wait, wake_on_urc=True)

    def _sleep(self, seconds: float, *, wake_on_urc: bool) -> None:
        if not wake_on_urc:
            self._stop.wait(seconds)
            return
        self._wake.wait(seconds)
        self._wake.clear()

    # -- opening ----------------------------------------------------------------------------------
    def _open(self) -> bool:
        cfg = self.config
        if self._users_probe is not None and is_device_path(cfg.port):
            users = self._users_probe(cfg.port)
            if users.modemmanager_owns:
                self._set_modemmanager(users)
                return False
            if users.others and not self._others_warned:
                self._others_warned = True
                log.warning("%s; AT commands may interleave with theirs", users.explain())
        try:
            port = self._opener()
        except Exception as exc:  # SerialException/OSError (no such device), ValueError (bad URL)
            reason = str(exc) if cfg.port in str(exc) else f"cannot open {cfg.port}: {exc}"
            reason = scrub_userinfo(reason.replace(cfg.port, self.port_label))  # URLs may hold passwords
            self._set_state("absent", reason)
            return False
        at = AtEngine(
            port, name=self.name, default_timeout_s=cfg.command_timeout_s, on_closed=self._on_closed
        )
        at.add_urc_listener(self._on_urc)
        at.start()
        self._at = at
        self._opens += 1
        if self._opens > 1:
            self._counts["reopen"] += 1
            self._note("reopen", f"{self.port_label} is back")
        self._timeouts = 0
        self._unresponsive = False
        self._needs_setup = True
        log.info("modem port %s open", self.port_label)
        try:
            self._setup()
        except PortClosed:
            return False
        return True

    def _on_closed(self, reason: str) -> None:
        log.warning("modem port %s lost: %s", self.port_label, scrub_userinfo(reason))
        self._wake.set()

    def _drop_engine(self, reason: str) -> None:
        at, self._at = self._at, None
        if at is not None:
            at.stop()
        self._set_state("absent", scrub_userinfo(f"port {self.port_label} gone: {reason}"))

    def _set_modemmanager(self, users: PortUsers) -> None:
        message = users.explain()
        if not self._mm_warned:
            self._mm_warned = True
            log.warning("%s; until then the agent only reports what ModemManager sees (read-only)", message)
        view = self._mm_probe() if self._mm_probe is not None else None
        with self._lock:
            self._state, self._message, self._mm_view = "modemmanager", message, view

    # -- setup (after every open and every modem reboot) ------------------------------------------
    def _setup(self) -> None:
        """Handshake, identity, SIM, URCs, APN, radio, GNSS. Timeouts here mark the modem unresponsive."""
        at = self._at
        assert at is not None
        cfg = self.config
        try:
            probe = min(1.0, cfg.command_timeout_s)
            if not any(at.ping(timeout=probe) for _ in range(3)):  # the first AT after boot may be eaten
                raise AtTimeout("no answer to AT")
            if cfg.mode == "managed":
                self._try("ATE0")
                self._try("AT+CMEE=1")
            self._identify()
            self._unlock_sim()
            if cfg.mode == "managed":
                if self._gnss_via_modem:
                    self._enable_gnss()
                if self._sim.get("state") == "READY":
                    for kind in REG_KINDS:
                        self._try(f"AT+{kind}=2")
                    self._ensure_apn()
                    self._ensure_radio()
            self._needs_setup = False
            self._setup_sim_state = self._sim.get("state")
            self._timeouts = 0
            self._unresponsive = False
        except AtTimeout:
            self._count_timeout()

    def _try(self, command: str, **kwargs: Any) -> Any:
        """A command whose refusal (ERROR) is tolerable; timeouts and a lost port still propagate."""
        assert self._at is not None
        try:
            return self._at.command(command, **kwargs)
        except AtError as exc:
            log.debug("%s refused: %s", command, exc.reason)
            return None

    def _identify(self) -> None:
        def text(command: str) -> str:
            resp = self._try(command)
            if resp is None:
                return ""
            lines = [
                ln.split(":", 1)[1].strip() if ln.startswith("+") and ":" in ln else ln for ln in resp.lines
            ]
            return (text_field(lines[0], 32) or "") if lines else ""

        manufacturer, model = text("AT+CGMI"), text("AT+CGMM")
        firmware, imei = text("AT+CGMR"), text("AT+CGSN")
        vendor = choose_vendor(self.config.vendor, manufacturer, model)
        changed = self._modem.get("imei") != imei or self._vendor is None
        self._vendor = vendor
        with self._lock:
            self._modem = {
                "manufacturer": manufacturer or None,
                "model": model or None,
                "firmware": firmware or None,
                "imei": imei or None,
                "vendor": vendor.name,
            }
        if changed:
            log.info(
                "modem: %s %s (firmware %s), vendor support: %s", manufacturer, model, firmware, vendor.name
            )

    def _read_sim(self) -> str:
        """READY, SIM PIN, SIM PUK, …, or MISSING / ERROR."""
        assert self._at is not None
        try:
            text = self._at.command("AT+CPIN?").first("+CPIN:")
        except AtError as exc:
            state = "MISSING" if exc.code == 10 else ("ERROR" if exc.code is not None else "UNKNOWN")
            if exc.code in (11, 12):
                state = "SIM PIN" if exc.code == 11 else "SIM PUK"
        else:
            state = parse_cpin(text or "")
            if state == "NOT INSERTED":
                state = "MISSING"
        with self._lock:
            self._sim["state"] = state
        return state

    def _unlock_sim(self) -> None:
        state = self._read_sim()
        if (
            state == "SIM PIN"
            and self.config.mode == "managed"
            and self.config.pin
            and not self._pin_rejected
        ):
            assert self._at is not None
            log.info("SIM asks for its PIN; entering the configured PIN")
            try:
                self._at.command(f'AT+CPIN="{self.config.pin}"')
            except AtError as exc:
                self._pin_rejected = True
                log.error(
                    "the SIM rejected the configured PIN (%s); not retrying, so the SIM does not lock "
                    "(PUK). Fix modem.pin and restart the agent.",
                    exc.reason,
                )
            state = self._read_sim()
        if state == "READY":
            iccid = self._vendor.iccid(self._at) if self._vendor and self._at else None
            with self._lock:
                self._sim["iccid"] = iccid

    def _ensure_apn(self) -> None:
        cfg = self.config
        resp = self._try("AT+CGDCONT?")
        contexts = parse_cgdcont(resp.all("+CGDCONT:")) if resp is not None else []
        current = next((c for c in contexts if c.cid == 1), None)
        if cfg.apn and (current is None or current.apn != cfg.apn or current.pdp_type != cfg.pdp_type):
            log.info("setting APN %r (%s) on PDP context 1", cfg.apn, cfg.pdp_type)
            if self._try(f'AT+CGDCONT=1,"{cfg.pdp_type}","{cfg.apn}"') is not None:
                current = None
                with self._lock:
                    self._apn = cfg.apn
                return
        with self._lock:
            self._apn = current.apn if current is not None else None

    def _ensure_radio(self) -> None:
        resp = self._try("AT+CFUN?")
        value = resp.first("+CFUN:") if resp is not None else None
        if value is not None and value.split(",")[0].strip() != "1":
            log.info("modem radio was off (CFUN %s); switching it on", value)
            self._try("AT+CFUN=1")

    def _enable_gnss(self) -> None:
        vendor, at = self._vendor, self._at
        if vendor is None or at is None:
            return
        if not vendor.supports_gnss:
            log.warning("gnss.source is modem but %s modems are not supported for GNSS", vendor.name)
            return
        try:
            vendor.gnss_enable(at)
        except AtError as exc:
            log.warning("could not switch on the modem's GNSS: %s", exc.reason)
        with self._lock:
            self._gnss_enabled = vendor.gnss_enabled(at)

    # -- polling ----------------------------------------------------------------------------------
    def _poll(self) -> None:
        at = self._at
        if at is None:
            return
        try:
            if self._unresponsive:
                if not at.ping(timeout=min(2.0, self.config.command_timeout_s)):
                    return
                log.warning("modem answers again")
                self._unresponsive = False
                self._timeouts = 0
                self._needs_setup = True
            if self._needs_setup:
                self._setup()
                if self._unresponsive:
                    return
            sim = self._read_sim()
            if (
                sim == "SIM PIN"
                and self.config.pin
                and not self._pin_rejected
                and self.config.mode == "managed"
            ):
                self._unlock_sim()
                sim = self._read_sim()
            if sim == "READY" and self._setup_sim_state != "READY":
                self._setup()  # the SIM became ready after set-up (slow unlock, re-seated): finish it
                if self._unresponsive:
                    return
            regs: dict[str, Registration | None] = dict.fromkeys(REG_KINDS)
            operator = op_tech = None
            signal = Signal()
            attached: bool | None = None
            if sim == "READY":
                for kind in REG_KINDS:
                    resp = self._try(f"AT+{kind}?")
                    text = resp.first(f"+{kind}:") if resp is not None else None
                    regs[kind] = parse_registration(text, solicited=True) if text else None
                resp = self._try("AT+COPS?")
                cops = parse_cops(resp.first("+COPS:") or "") if resp is not None else None
                if cops is not None:
                    operator, op_tech = cops.name, cops.technology
                resp = self._try("AT+CSQ")
                csq = parse_csq(resp.first("+CSQ:") or "") if resp is not None else None
                details = self._vendor.signal_details(at) if self._vendor is not None else None
                signal = _merge_signal(csq, details)
                resp = self._try("AT+CGATT?")
                text = resp.first("+CGATT:") if resp is not None else None
                attached = text.strip() == "1" if text else None
            self._timeouts = 0
        except AtTimeout:
            self._count_timeout()
            self._update_state()
            return
        was = self._registration_state()
        with self._lock:
            self._regs = regs
            self._operator, self._op_tech = operator, op_tech
            self._signal = signal
            self._attached = attached
            self._last_poll_mono = time.monotonic()
        now_state = self._registration_state()
        if now_state != was:
            log.info("registration: %s → %s", was, now_state)
        self._update_state()

    def _count_timeout(self) -> None:
        self._timeouts += 1
        if self._timeouts >= self.config.unresponsive_after and not self._unresponsive:
            self._unresponsive = True
            self._needs_setup = True
            log.error("the modem stopped answering (%d commands timed out)", self._timeouts)
        self._update_state()

    # -- URCs -------------------------------------------------------------------------------------
    def _on_urc(self, line: str) -> None:
        """Runs on the AT reader thread: queue and wake, nothing else (bounded; oldest dropped)."""
        if len(self._urcs) == self._urcs.maxlen:
            self._urcs_dropped += 1
        self._urcs.append(line)
        self._wake.set()

    def _drain_urcs(self) -> None:
        while self._urcs:
            line = self._urcs.popleft()
            kind = line.split(":", 1)[0].lstrip("+") if line.startswith("+") else line
            if kind in REG_KINDS:
                reg = parse_registration(line.split(":", 1)[1], solicited=False)
                if reg is not None:
                    old = self._regs.get(kind)
                    if old is not None and reg.area is None and old.state == reg.state:
                        reg = old  # a short-form URC (stat only) repeats what we know
                    was = self._registration_state()
                    with self._lock:
                        self._regs[kind] = reg
                        if reg.registered != (was in ("home", "roaming")):
                            self._attached = None  # unknown until the next poll reads it
                    if self._registration_state() != was:
                        log.info("registration (URC): %s → %s", was, self._registration_state())
                        self._poll_soon = True  # operator, signal and attach change with it
                    self._update_state()
            elif line in ("RDY", "START"):
                log.info("modem (re)booted (%s)", line)
                self._needs_setup = True
                self._poll_soon = True
            elif line.startswith("+CPIN:"):
                state = parse_cpin(line.split(":", 1)[1])
                with self._lock:
                    self._sim["state"] = state
                if state != "READY":
                    self._needs_setup = True
            elif line in ("POWERED DOWN", "NORMAL POWER DOWN"):
                log.warning("modem reports %s", line.lower())

    # -- state ------------------------------------------------------------------------------------
    def _registration(self) -> tuple[str | None, Registration | None]:
        """The most useful registration: a registered PS/EPS one first, else the most telling."""
        regs = self._regs
        for kind in REG_KINDS[:2]:
            reg = regs.get(kind)
            if reg is not None and reg.registered:
                return kind, reg
        reg = regs.get("CREG")
        if reg is not None and reg.registered and all(regs.get(k) is None for k in REG_KINDS[:2]):
            return "CREG", reg
        for wanted in ("denied", "searching", "emergency_only", "not_registered", "unknown"):
            for kind in REG_KINDS:
                reg = regs.get(kind)
                if reg is not None and reg.state == wanted:
                    return kind, reg
        return None, None

    def _registration_state(self) -> str | None:
        _, reg = self._registration()
        return reg.state if reg is not None else None

    def _link_up(self) -> bool:
        _, reg = self._registration()
        return (
            self._at is not None
            and not self._unresponsive
            and self._sim.get("state") == "READY"
            and reg is not None
            and reg.registered
            and self._attached is not False
        )

    def _update_state(self) -> None:
        sim = self._sim.get("state")
        _, reg = self._registration()
        if self._at is None:
            return  # absent / modemmanager were set where they were detected
        if self._unresponsive:
            state, message = "no_response", f"the modem stopped answering ({self._timeouts} timeouts)"
        elif sim == "MISSING":
            state, message = "sim_missing", "no SIM card detected"
        elif sim in ("SIM PIN", "SIM PUK", "PH-SIM PIN"):
            if self._pin_rejected:
                message = (
                    "the SIM rejected the configured PIN; fix modem.pin (not retried, to avoid a PUK lock)"
                )
            elif sim == "SIM PIN" and not self.config.pin:
                message = "the SIM needs a PIN: set modem.pin"
            elif sim == "SIM PIN" and self.config.mode != "managed":
                message = "the SIM needs its PIN (monitor mode does not enter it)"
            else:
                message = (
                    f"the SIM is locked ({sim}); it needs a PUK from the operator"
                    if sim == "SIM PUK"
                    else sim
                )
            state = "sim_locked"
        elif sim not in (None, "READY"):
            state, message = "sim_error", f"SIM state {sim}"
        elif reg is None:
            state, message = "starting", ""
        elif reg.state == "denied":
            state, message = "denied", "registration denied by the network"
        elif not reg.registered:
            state, message = "searching", f"not registered ({reg.state})"
        elif self._attached is False:
            state, message = "not_attached", "registered but not attached for data"
        else:
            state, message = "online", ""
        self._set_state(state, message)

    def _set_state(self, state: str, message: str) -> None:
        with self._changed:
            changed = state != self._state
            self._state, self._message = state, message
            if state != "modemmanager":
                self._mm_view = None
            self._changed.notify_all()
        if changed and state not in ("starting",):
            # before the first registration, searching is the normal start-up, not a problem
            level = logging.INFO if state == "online" or not self._ever_up else logging.WARNING
            log.log(level, "modem link: %s%s", state, f" ({message})" if message else "")

    def _note(self, step: str, detail: str) -> None:
        self._events.append({"step": step, "detail": detail, "mono": round(time.monotonic(), 3)})

    # -- recovery ladder --------------------------------------------------------------------------
    def _ladder(self) -> list[str]:
        if self.config.mode != "managed":
            return ["requery"]
        if self._at is None:
            return ["power_cycle"] if self._power_cycle is not None else []
        steps = ["requery", "radio_cycle", "reset"]
        if self._power_cycle is not None:
            steps.append("power_cycle")
        return steps

    def _evaluate(self, now: float) -> None:
        if self._state in ("modemmanager", "sim_locked"):
            self._down_since = None  # nothing a reset could fix; say so and wait for a person
            return
        if self._link_up():
            recovered = self._down_since is not None and (self._ever_up or self._outage_step is not None)
            if not recovered and not self._ever_up:
                self._note("up", "first registration")
            self._ever_up = True
            if recovered and self._down_since is not None:
                down_s = now - self._down_since
                step = self._outage_step
                self._last_recovery = {"after_step": step, "down_s": round(down_s, 1)}
                log.info("modem link up again after %.0fs (last step: %s)", down_s, step or "none")
                self._note("recovered", f"after {step or 'no step'}")
            self._down_since = None
            self._step_index = 0
            self._rounds = 0
            return
        if self._down_since is None:
            self._down_since = now
            self._step_index = 0
            self._outage_step = None
            grace = 0.0 if self._unresponsive else self.config.recovery_grace_s
            self._next_step_at = now + grace
            return
        if now < self._next_step_at:
            return
        steps = self._ladder()
        if self._step_index >= len(steps):
            self._rounds += 1
            pause = min(self.config.step_wait_s * 2 ** (self._rounds - 1), self.config.retry_max_s)
            if steps:
                log.error(
                    "modem link down for %.0fs and every recovery step failed (round %d); "
                    "starting over in %.0fs",
                    now - self._down_since,
                    self._rounds,
                    pause,
                )
            else:
                log.error(
                    "modem link down for %.0fs (%s); no recovery step applies here (%s), still retrying",
                    now - self._down_since,
                    self._state,
                    "monitor mode" if self.config.mode != "managed" else "no power_cycle_command",
                )
            self._note("exhausted", f"round {self._rounds}")
            self._step_index = 0
            self._next_step_at = now + pause
            return
        step = steps[self._step_index]
        self._step_index += 1
        self._counts[step] += 1
        self._outage_step = step
        self._last_step = {"step": step, "mono": round(now, 3)}
        log.warning(
            "modem link down for %.0fs (%s): recovery step %s", now - self._down_since, self._state, step
        )
        self._note(step, self._state)
        try:
            self._run_step(step)
        except (AtTimeout, PortClosed, AtError) as exc:
            log.warning("recovery step %s failed: %s", step, exc)
            if isinstance(exc, AtTimeout):
                self._count_timeout()
        self._next_step_at = time.monotonic() + self.config.step_wait_s

    def _run_step(self, step: str) -> None:
        at = self._at
        # a modem that stopped answering gets the ordinary timeout, not the documented maximum
        limit = self.config.command_timeout_s if self._unresponsive else None
        if step == "requery":
            if at is not None:
                if self._unresponsive:
                    if at.ping(timeout=min(2.0, self.config.command_timeout_s)):
                        self._unresponsive = False
                        self._needs_setup = True
                else:
                    self._needs_setup = True
                    if self._state == "not_attached":
                        self._try("AT+CGATT=1")  # registered but no packet attach: ask for it
                self._poll()
        elif step == "radio_cycle" and at is not None:
            at.command("AT+CFUN=0", timeout=limit)
            self._stop.wait(min(2.0, self.config.step_wait_s / 4))
            at.command("AT+CFUN=1", timeout=limit)
            self._needs_setup = True
        elif step == "reset" and at is not None:
            self._needs_setup = True
            (self._vendor or Vendor()).reset(at, timeout=limit)
        elif step == "power_cycle" and self._power_cycle is not None:
            if self._at is not None:
                self._drop_engine("power cycle")
            ok = self._power_cycle()
            log.warning("power cycle %s", "done" if ok else "failed")

    # -- one-shot use (`agent modem status`, hardware checks) -------------------------------------
    def survey(self) -> dict[str, Any]:
        """Open, identify, read SIM, registration, operator, signal, attach and GNSS once, close.

        Runs on the caller's thread; in monitor mode (what the CLI uses) nothing is written to the
        modem. Returns the same shape as status().
        """
        if not self._open():
            return self.status()
        try:
            self._poll()
            if self._at is not None and self._vendor is not None and not self._unresponsive:
                enabled = self._vendor.gnss_enabled(self._at)
                with self._lock:
                    self._gnss_enabled = enabled
        except (PortClosed, AtTimeout):
            pass
        self._update_state()
        result = self.status()
        at, self._at = self._at, None
        if at is not None:
            at.stop()
        return result

    # -- reporting --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The link as telemetry and `agent modem status` show it (JSON-ready, a copy)."""
        now = time.monotonic()
        with self._lock:
            kind, reg = self._registration()
            at = self._at
            counters = at.protocol.stats.as_dict() if at is not None else {}
            status = {
                "state": self._state,
                "message": self._message,
                "up": self._link_up(),
                "mode": self.config.mode,
                "port": self.port_label,
                "modem": copy.deepcopy(self._modem),
                "sim": copy.deepcopy(self._sim),
                "registration": {
                    "state": reg.state if reg else None,
                    "stat": reg.stat if reg else None,
                    "source": kind,
                    "area": reg.area if reg else None,
                    "cell": reg.cell if reg else None,
                },
                "operator": self._operator,
                "technology": (reg.technology if reg and reg.technology else None) or self._op_tech,
                "signal": self._signal.as_dict(),
                "attached": self._attached,
                "apn": self._apn,
                "gnss_enabled": self._gnss_enabled,
                "down_s": round(now - self._down_since, 1) if self._down_since is not None else None,
                "polled_s_ago": round(now - self._last_poll_mono, 1) if self._last_poll_mono else None,
                "recovery": {
                    "counts": dict(self._counts),
                    "round": self._rounds,
                    "next_step": self._next_step_name(),
                    "next_step_in_s": round(max(0.0, self._next_step_at - now), 1)
                    if self._down_since is not None
                    else None,
                    "last_step": copy.deepcopy(self._last_step),
                    "last_recovery": copy.deepcopy(self._last_recovery),
                    "history": list(self._events),
                },
                "counters": {
                    **counters,
                    "commands": at.commands if at is not None else 0,
                    "urcs_dropped": self._urcs_dropped,
                    "opens": self._opens,
                },
            }
            if self._mm_view is not None:
                status["modemmanager"] = copy.deepcopy(self._mm_view)
        return status

    def _next_step_name(self) -> str | None:
        if self._down_since is None:
            return None
        steps = self._ladder()
        return steps[self._step_index] if self._step_index < len(steps) else "pause"

    def link_context(self) -> dict[str, Any]:
        """The `link` object of every event: registration, technology, operator, signal."""
        with self._lock:
            _, reg = self._registration()
            registration = reg.state if reg is not None and self._at is not None else self._state
            if self._state in ("absent", "no_response", "modemmanager", "sim_missing", "sim_locked"):
                registration = self._state
            signal = {k: v for k, v in self._signal.as_dict().items() if v is not None and k != "csq"}
            view = self._mm_view or {}
            return {
                "registration": registration,
                "technology": (reg.technology if reg and reg.technology else None)
                or self._op_tech
                or view.get("technology"),
                "operator": self._operator or view.get("operator"),
                "signal": signal or None,
            }


def _merge_signal(csq: Signal | None, details: Signal | None) -> Signal:
    base = csq or Signal()
    if details is None:
        return base
    return Signal(
        rssi_dbm=details.rssi_dbm if details.rssi_dbm is not None else base.rssi_dbm,
        csq=base.csq,
        ber=base.ber,
        rsrp=details.rsrp,
        rsrq=details.rsrq,
        sinr=details.sinr,
    )
