"""A scripted LTE modem with GNSS, for tests and `agent --simulate`.

It speaks AT like a Quectel EC25, a SIMCom SIM7600 or a plain 3GPP modem (echo, final result
codes, URCs, `+CME ERROR`s), registers after a delay, streams NMEA on its own port once GNSS is
switched on, and misbehaves on cue: slow replies, URCs in the middle of a response, a missing or
PIN-locked SIM, registration denied for a while, a radio that stays stuck until it is cycled, a
stack that needs a full reset, a hang that only a power cycle cures, and a USB port that vanishes
and comes back. Scenarios are named presets of those knobs (`SCENARIOS`); tests can also script it
directly (`unplug()`, `hang()`, `set_fault()`…).

The modem is transport-free: `host_write`/`host_read` are the two ends of its serial ports. Two
transports carry them to the agent's unchanged serial code: a pyserial URL handler
(`vigilemu://NAME` for the AT port, `vigilemu://NAME/nmea` for NMEA, see `urlhandlers/`) and real
pseudo-terminals (`PtyLink`), whose path is a symlink that disappears and reappears like a udev
name when the modem re-enumerates. No thread runs inside the modem: time-driven behaviour
(registration, URCs, NMEA cycles) is evaluated lazily whenever a transport touches it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.gnss.nmea import NmeaFramer, build, strip_comments

log = logging.getLogger(__name__)

AT, NMEA = "at", "nmea"
URL_SCHEME = "vigilemu"
_OUT_LIMIT = 64 * 1024  # bytes a port buffers for a reader that does not read (like a tty buffer)

_IDENTITY = {
    "quectel": ("Quectel", "EC25", "EC25EFAR06A06M4G", "866758041234567"),
    "simcom": ("SIMCOM INCORPORATED", "SIMCOM_SIM7600E-H", "LE20B04SIM7600M22", "862636051234568"),
    "generic": ("Generic", "LTE Modem", "1.0.0", "353456789012345"),
}
_ICCID = "8931440400012345678"
_WRITE = re.compile(
    r"^AT(E\d|&F|Z|\+(CMEE|CPIN|CGDCONT|CFUN|C\w*REG|COPS|CGATT|CGACT|QGPS|QGPSCFG|CGPS)=|\+CRESET|\+QGPSEND)"
)


class PortGone(Exception):
    """The emulated device vanished (unplugged, rebooting); the handle the host holds is dead."""


@dataclass
class Scenario:
    """Knobs of the emulated modem. Times are seconds of real (monotonic) time."""

    vendor: str = "quectel"
    echo: bool = True  # echo commands until ATE0, as modems do after boot
    sim: str = "ready"  # ready | missing | pin | puk
    pin: str = "1234"
    operator: str = "Vigil Test Network"
    mcc_mnc: str = "00101"
    act: int = 7  # LTE
    roaming: bool = False
    csq: int = 20
    rsrp: int = -95
    rsrq: int = -10
    rssi: int = -65
    sinr: int = 12
    register_delay_s: float = 1.0  # searching this long after the radio comes on
    denied_for_s: float = 0.0  # then denied this long, then registered
    radio_stuck: bool = False  # searching until the radio is cycled (CFUN 0 → 1)
    needs_reset: bool = False  # searching until a full reset (CFUN=1,1 / CRESET)
    reply_delay_s: float = 0.0  # every answer comes this late
    slow_commands: dict[str, float] = field(default_factory=dict)  # command prefix → extra delay
    urc_mid_response: bool = False  # URCs between a response and its OK
    hang_after_commands: int | None = None  # stop answering after N commands, until power cycled
    vanish_after_commands: int | None = None  # the port vanishes after N commands (USB glitch)
    vanish_for_s: float = 2.0
    reboot_s: float = 0.5  # port absent during a reset/power cycle (USB re-enumeration)
    boot_s: float = 0.3  # then this long before RDY and answers
    flaky_period_s: float | None = None  # simulate: a fault every period (stuck radio, then a hang)
    power_switch: Path | None = None  # touching this file power-cycles the modem (a GPIO stand-in)
    lat: float = 52.37403
    lon: float = 4.88969
    alt: float = 2.0
    route: Path | None = None  # NMEA log replayed (re-stamped to now) instead of a fixed position
    nmea_interval_s: float = 1.0
    gnss_on: bool = False  # GNSS engine running at boot (a standalone receiver is always on)
    # command (upper case, no spaces) -> (information lines, final result): well-framed nonsense answered
    # instead of the normal reply, for tests of what the agent does with it
    garbled: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> Scenario:
        if name not in SCENARIOS:
            raise ValueError(f"unknown modem scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown scenario settings: {', '.join(sorted(unknown))}")
        return replace(cls(**SCENARIOS[name]), **overrides)


SCENARIOS: dict[str, dict[str, Any]] = {
    "normal": {},
    "slow": {"reply_delay_s": 0.3, "slow_commands": {"AT+COPS?": 2.0}},
    "urc-mid-response": {"urc_mid_response": True},
    "sim-missing": {"sim": "missing"},
    "pin-required": {"sim": "pin"},
    "denied-then-granted": {"denied_for_s": 20.0},
    "radio-stuck": {"radio_stuck": True},
    "needs-reset": {"needs_reset": True},
    "hang": {"hang_after_commands": 40},
    "vanish": {"vanish_after_commands": 40},
    "roaming": {"roaming": True, "operator": "Vigil Roaming Partner"},
    "flaky": {"flaky_period_s": 300.0},
}


@dataclass
class EmulatorCounters:
    commands: int = 0
    resets: int = 0
    radio_cycles: int = 0
    power_cycles: int = 0
    pin_attempts: int = 0
    unplugs: int = 0
    dropped_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ModemEmulator:
    """The emulated modem. Thread-safe; every public method may be called from any thread."""

    def __init__(self, scenario: Scenario | str = "normal", *, name: str = "sim") -> None:
        self.scenario = Scenario.named(scenario) if isinstance(scenario, str) else scenario
        if self.scenario.vendor not in _IDENTITY:
            raise ValueError(f"unknown emulated vendor {self.scenario.vendor!r}")
        self.name = name
        self.counters = EmulatorCounters()
        self.history: deque[str] = deque(maxlen=500)  # commands received, newest last
        self._cond = threading.Condition()
        self._out: dict[str, deque[tuple[float, bytes]]] = {AT: deque(), NMEA: deque()}
        self._inbuf = bytearray()
        self._route = _load_route(self.scenario.route) if self.scenario.route else None
        self._route_index = 0
        now = time.monotonic()
        self.generation = 0
        self._present_at = now  # the port exists from this instant (while _present)
        self._present: bool = True
        self._hang_after = self.scenario.hang_after_commands
        self._vanish_after = self.scenario.vanish_after_commands
        self._next_fault_at = now + self.scenario.flaky_period_s if self.scenario.flaky_period_s else None
        self._fault_toggle = False
        self._reboot_at: float | None = None
        self.contexts: dict[int, tuple[str, str]] = {1: ("IPV4V6", "")}  # kept in NV across reboots
        self._boot(now, announce=False)

    # -- life of the device -----------------------------------------------------------------------
    def _boot(self, now: float, *, announce: bool = True) -> None:
        sc = self.scenario
        self.echo = sc.echo
        self.cfun = 1
        self.cmee = 0
        self.hung = False
        self.reg_n = {"CREG": 0, "CGREG": 0, "CEREG": 0}
        self.sim_state = {"ready": "READY", "pin": "SIM PIN", "puk": "SIM PUK"}.get(sc.sim, "missing")
        self.pin_left = 3
        self.gnss_on = sc.gnss_on
        self._ready_at = now + sc.boot_s
        self.radio_on_at = self._ready_at
        self._reported_stat = 0
        self._nmea_next = self._ready_at
        self._out[AT].clear()
        self._out[NMEA].clear()
        self._inbuf.clear()
        if announce:
            urcs = ["RDY", "+CFUN: 1", f"+CPIN: {self._cpin_text()}"]
            if sc.vendor == "quectel":
                urcs += ["+QUSIM: 1", "+QIND: SMS DONE"]
            for line in urcs:
                self._emit(AT, f"\r\n{line}\r\n", self._ready_at)

    def _cpin_text(self) -> str:
        return "NOT INSERTED" if self.sim_state == "missing" else self.sim_state

    def present(self) -> bool:
        with self._cond:
            self._tick(time.monotonic())
            return self._present and time.monotonic() >= self._present_at

    def unplug(self, for_s: float | None = None) -> None:
        """The device disappears (cable, USB hub, crash). `for_s`: it comes back (rebooted) after that."""
        with self._cond:
            now = time.monotonic()
            self.counters.unplugs += 1
            self.generation += 1
            if for_s is None:
                self._present = False
            else:
                self._present = True
                self._present_at = now + for_s
                self._boot(now + for_s)
            self._cond.notify_all()

    def plug(self) -> None:
        """An unplugged device comes back and boots."""
        with self._cond:
            now = time.monotonic()
            self.generation += 1
            self._present = True
            self._present_at = now
            self._boot(now)
            self._cond.notify_all()

    def power_cycle(self) -> bool:
        """What a GPIO/USB-hub power switch does: the only cure for a hung modem. True: done."""
        with self._cond:
            self.counters.power_cycles += 1
            self._hang_after = None
            self._reboot(time.monotonic())
        return True

    def hang(self) -> None:
        """The modem stops answering anything until it is power-cycled."""
        with self._cond:
            self.hung = True

    def set_fault(self, *, radio_stuck: bool | None = None, needs_reset: bool | None = None) -> None:
        with self._cond:
            if radio_stuck is not None:
                self.scenario.radio_stuck = radio_stuck
            if needs_reset is not None:
                self.scenario.needs_reset = needs_reset

    def inject(self, line: str, delay: float = 0.0) -> None:
        """Send an unsolicited line on the AT port."""
        with self._cond:
            self._emit(AT, f"\r\n{line}\r\n", time.monotonic() + delay)

    def _reboot(self, now: float) -> None:
        """Reset: the USB device leaves and comes back (a new generation of the port)."""
        self.generation += 1
        self._present = True
        self._present_at = now + self.scenario.reboot_s
        self._boot(self._present_at)
        self._cond.notify_all()

    # -- the registration model --------------------------------------------------------------------
    def registration_stat(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        sc = self.scenario
        if not self._present or now < self._ready_at or self.cfun != 1 or self.sim_state != "READY":
            return 0
        if self._reboot_at is not None:
            return 0  # shutting down for a reset
        if sc.radio_stuck or sc.needs_reset:
            return 2
        since = now - self.radio_on_at
        if since < sc.register_delay_s:
            return 2
        if since < sc.register_delay_s + sc.denied_for_s:
            return 3
        return 5 if sc.roaming else 1

    def _tick(self, now: float) -> None:
        """Time-driven behaviour, evaluated lazily under the lock."""
        sc = self.scenario
        if self._reboot_at is not None and now >= self._reboot_at:
            self._reboot_at = None
            sc.needs_reset = False
            sc.radio_stuck = False
            self._hang_after = None
            self._reboot(now)
        if sc.power_switch is not None and sc.power_switch.exists():
            with contextlib.suppress(OSError):
                sc.power_switch.unlink()
            self.counters.power_cycles += 1
            self._hang_after = None
            self._reboot(now)
        if self._next_fault_at is not None and now >= self._next_fault_at:
            self._next_fault_at = now + (sc.flaky_period_s or 300.0)
            self._fault_toggle = not self._fault_toggle
            if self._fault_toggle:
                sc.radio_stuck = True
                log.info("emulated modem %s: radio stuck (a radio off/on cures it)", self.name)
            else:
                self.hung = True
                log.info("emulated modem %s: hung (a power cycle cures it)", self.name)
        if not self._present or now < self._present_at:
            return
        stat = self.registration_stat(now)
        if stat != self._reported_stat:
            self._reported_stat = stat
            for kind, n in self.reg_n.items():
                if n:
                    self._emit(AT, f"\r\n{self._reg_urc(kind, n, stat)}\r\n", now)

    def _reg_fields(self, stat: int, n: int) -> str:
        if n >= 2 and stat in (1, 5):
            return f'{stat},"1A2B","01A2B3C4",{self.scenario.act}'
        return str(stat)

    def _reg_urc(self, kind: str, n: int, stat: int) -> str:
        return f"+{kind}: {self._reg_fields(stat, n)}"

    # -- the host side of the ports ----------------------------------------------------------------
    def _check(self, generation: int | None) -> None:
        if not self._present or time.monotonic() < self._present_at:
            raise PortGone("device disconnected")
        if generation is not None and generation != self.generation:
            raise PortGone("device disconnected (re-enumerated)")

    def open_generation(self) -> int:
        """Open a port now: the handle is valid until the device leaves. Raises PortGone if absent."""
        with self._cond:
            self._tick(time.monotonic())
            self._check(None)
            return self.generation

    def host_write(self, channel: str, data: bytes, generation: int | None = None) -> None:
        with self._cond:
            now = time.monotonic()
            self._tick(now)
            self._check(generation)
            if channel != AT:
                return  # writes to the NMEA port are ignored, as the receivers do
            self._inbuf.extend(data)
            while True:
                cut = min((i for i in (self._inbuf.find(b"\r"), self._inbuf.find(b"\n")) if i >= 0), default=-1)
                if cut < 0:
                    if len(self._inbuf) > 4096:
                        self._inbuf.clear()
                    break
                raw = self._inbuf[:cut].decode("ascii", errors="replace").strip()
                del self._inbuf[: cut + 1]
                if raw:
                    self._command_line(raw, now)
            self._cond.notify_all()

    def host_read(
        self, channel: str, size: int, timeout: float | None, generation: int | None = None
    ) -> bytes:
        """Up to `size` bytes, waiting up to `timeout` for the first; like a serial read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            out = bytearray()
            while True:
                now = time.monotonic()
                self._tick(now)
                self._check(generation)
                if channel == NMEA:
                    self._nmea_due(now)
                out += self._take(channel, size - len(out), now)
                if len(out) >= size or (out and deadline is not None and now >= deadline):
                    return bytes(out)
                if deadline is not None and now >= deadline:
                    return bytes(out)
                wait = 0.05 if deadline is None else min(0.05, max(0.0, deadline - now))
                nxt = self._next_due(channel)
                if nxt is not None:
                    wait = min(wait, max(0.001, nxt - now))
                self._cond.wait(wait)

    def pending(self, channel: str, generation: int | None = None) -> int:
        with self._cond:
            now = time.monotonic()
            self._tick(now)
            self._check(generation)
            if channel == NMEA:
                self._nmea_due(now)
            return sum(len(d) for due, d in self._out[channel] if due <= now)

    def take(self, channel: str, size: int, generation: int | None = None) -> bytes:
        """Non-blocking read (the pty transport polls)."""
        with self._cond:
            now = time.monotonic()
            self._tick(now)
            self._check(generation)
            if channel == NMEA:
                self._nmea_due(now)
            return self._take(channel, size, now)

    def clear_input(self, channel: str) -> None:
        with self._cond:
            now = time.monotonic()
            self._out[channel] = deque((due, d) for due, d in self._out[channel] if due > now)

    def _take(self, channel: str, size: int, now: float) -> bytes:
        queue = self._out[channel]
        out = bytearray()
        while queue and queue[0][0] <= now and len(out) < size:
            due, data = queue.popleft()
            room = size - len(out)
            out += data[:room]
            if len(data) > room:
                queue.appendleft((due, data[room:]))
        return bytes(out)

    def _next_due(self, channel: str) -> float | None:
        queue = self._out[channel]
        due = queue[0][0] if queue else None
        if channel == NMEA and self.gnss_on:
            due = self._nmea_next if due is None else min(due, self._nmea_next)
        return due

    def _emit(self, channel: str, text: str, due: float) -> None:
        queue = self._out[channel]
        data = text.encode("utf-8")
        # keep time order even when a delayed answer is followed by an immediate URC
        if queue and queue[-1][0] > due:
            due = queue[-1][0]
        queue.append((due, data))
        while sum(len(d) for _, d in queue) > _OUT_LIMIT:
            _, dropped = queue.popleft()
            self.counters.dropped_bytes += len(dropped)

    # -- AT commands -------------------------------------------------------------------------------
    def _command_line(self, raw: str, now: float) -> None:
        if now < self._ready_at:
            return  # still booting: the AT port swallows input
        self.counters.commands += 1
        self.history.append(raw)
        if self._vanish_after is not None and self.counters.commands >= self._vanish_after:
            self._vanish_after = None
            self.counters.unplugs += 1
            self.generation += 1
            self._present_at = now + self.scenario.vanish_for_s
            self._boot(self._present_at)
            return
        if self._hang_after is not None and self.counters.commands >= self._hang_after:
            self._hang_after = None
            self.hung = True
        if self.hung:
            return
        sc = self.scenario
        delay = sc.reply_delay_s + next(
            (extra for prefix, extra in sc.slow_commands.items() if raw.upper().startswith(prefix)), 0.0
        )
        if self.echo:
            self._emit(AT, raw + "\r", now)
        lines, final, after = self._execute(raw, now)
        due = now + delay
        body = "".join(f"\r\n{line}\r\n" for line in lines)
        mid = ""
        if sc.urc_mid_response and (raw.endswith("?") or raw.upper() in ("AT+CSQ", "AT+QCSQ")):
            stat = self.registration_stat(now)
            cereg = self._reg_urc("CEREG", self.reg_n["CEREG"] or 1, stat)
            mid = f'\r\n{cereg}\r\n\r\n+QIND: "csq",{sc.csq},99\r\n'
            if lines:  # one URC before the answer, the rest between the answer and OK
                body = f"\r\n+CGEV: ME PDN ACT 1\r\n{body}"
        self._emit(AT, f"{body}{mid}\r\n{final}\r\n", due)
        if after is not None:
            after(due)

    def _error(self, code: int) -> str:
        return f"+CME ERROR: {code}" if self.cmee else "ERROR"

    def _execute(self, raw: str, now: float) -> tuple[list[str], str, Any]:
        """One command → (information lines, final result, action after the answer is sent)."""
        sc = self.scenario
        up = raw.upper().replace(" ", "")
        manufacturer, model, firmware, imei = _IDENTITY[sc.vendor]
        registered = self.registration_stat(now) in (1, 5)
        if up in sc.garbled:
            lines, final = sc.garbled[up]
            return list(lines), final, None
        if up in ("AT", "ATZ", "AT&F"):
            return [], "OK", None
        if up in ("ATE0", "ATE1", "ATE"):
            self.echo = up == "ATE1"
            return [], "OK", None
        if up.startswith("AT+CMEE="):
            self.cmee = int(up.split("=", 1)[1] or 0)
            return [], "OK", None
        if up == "ATI":
            return [manufacturer, model, f"Revision: {firmware}"], "OK", None
        if up in ("AT+CGMI", "AT+GMI"):
            return [manufacturer], "OK", None
        if up in ("AT+CGMM", "AT+GMM"):
            return [model], "OK", None
        if up in ("AT+CGMR", "AT+GMR"):
            return [firmware], "OK", None
        if up in ("AT+CGSN", "AT+GSN"):
            return [imei], "OK", None
        if up == "AT+CPIN?":
            if self.sim_state == "missing":
                return [], "+CME ERROR: 10", None
            return [f"+CPIN: {self.sim_state}"], "OK", None
        if up.startswith("AT+CPIN="):
            return self._enter_pin(raw.split("=", 1)[1].strip().strip('"'), now)
        iccid_tag = {"AT+CCID": "+CCID", "AT+QCCID": "+QCCID", "AT+CICCID": "+ICCID"}.get(up)
        if iccid_tag is not None:
            vendor_tag = {"quectel": "+QCCID", "simcom": "+ICCID"}.get(sc.vendor)
            if iccid_tag not in ("+CCID", vendor_tag):
                return [], "ERROR", None
            if self.sim_state == "missing":
                return [], "+CME ERROR: 10", None
            return [f"{iccid_tag}: {_ICCID}"], "OK", None
        for kind in ("CREG", "CGREG", "CEREG"):
            if up == f"AT+{kind}?":
                n = self.reg_n[kind]
                return [f"+{kind}: {n},{self._reg_fields(self.registration_stat(now), n)}"], "OK", None
            if up.startswith(f"AT+{kind}="):
                self.reg_n[kind] = int(up.split("=", 1)[1] or 0)
                return [], "OK", None
        if up == "AT+COPS?":
            if registered:
                return [f'+COPS: 0,0,"{sc.operator}",{sc.act}'], "OK", None
            return ["+COPS: 0"], "OK", None
        if up.startswith("AT+COPS="):
            return [], "OK", None
        if up == "AT+CSQ":
            return [f"+CSQ: {sc.csq if registered else 99},99"], "OK", None
        if up == "AT+CESQ":
            if not registered:
                return ["+CESQ: 99,99,255,255,255,255"], "OK", None
            return [f"+CESQ: 99,99,255,255,{(sc.rsrq + 20) * 2},{sc.rsrp + 141}"], "OK", None
        if up == "AT+CGATT?":
            return [f"+CGATT: {1 if registered else 0}"], "OK", None
        if up.startswith("AT+CGATT="):
            return [], "OK", None
        if up == "AT+CGDCONT?":
            return [f'+CGDCONT: {cid},"{t}","{apn}","0.0.0.0",0,0' for cid, (t, apn) in self.contexts.items()], (
                "OK"
            ), None
        if up.startswith("AT+CGDCONT="):
            from agent.modem.parse import split_fields

            f = split_fields(raw.split("=", 1)[1])
            try:
                self.contexts[int(f[0])] = (f[1] if len(f) > 1 else "IP", f[2] if len(f) > 2 else "")
            except ValueError:
                return [], "ERROR", None
            return [], "OK", None
        if up == "AT+CFUN?":
            return [f"+CFUN: {self.cfun}"], "OK", None
        if up.startswith("AT+CFUN="):
            return self._cfun(up.split("=", 1)[1], now)
        if up == "AT+CRESET" and sc.vendor == "simcom":
            self.counters.resets += 1
            return [], "OK", self._reset_after
        vendor = self._vendor_command(up, raw, registered)
        if vendor is not None:
            return vendor
        return [], "ERROR", None

    def _enter_pin(self, pin: str, now: float) -> tuple[list[str], str, Any]:
        self.counters.pin_attempts += 1
        if self.sim_state != "SIM PIN":
            return [], "+CME ERROR: 3", None
        if pin == self.scenario.pin:
            self.sim_state = "READY"
            self.radio_on_at = now
            return [], "OK", lambda due: self._emit(AT, "\r\n+CPIN: READY\r\n", due)
        self.pin_left -= 1
        if self.pin_left <= 0:
            self.sim_state = "SIM PUK"
        return [], "+CME ERROR: 16", None

    def _cfun(self, arg: str, now: float) -> tuple[list[str], str, Any]:
        parts = arg.split(",")
        if parts[0] == "1" and len(parts) > 1 and parts[1] == "1":
            self.counters.resets += 1
            return [], "OK", self._reset_after
        if parts[0] in ("0", "4"):
            self.cfun = int(parts[0])
            return [], "OK", None
        if parts[0] == "1":
            if self.cfun != 1:
                self.counters.radio_cycles += 1
                self.scenario.radio_stuck = False
                self.radio_on_at = now
            self.cfun = 1
            return [], "OK", None
        return [], "ERROR", None

    def _reset_after(self, due: float) -> None:
        """Reboot once the OK has gone out (the modem answers, then drops off the bus); the reboot,
        not the command, clears a stuck stack."""
        self._reboot_at = due + 0.05

    def _vendor_command(self, up: str, raw: str, registered: bool) -> tuple[list[str], str, Any] | None:
        sc = self.scenario
        if sc.vendor == "quectel":
            if up == 'AT+QENG="SERVINGCELL"':
                if not registered:
                    return ['+QENG: "servingcell","SEARCH"'], "OK", None
                cell = (
                    f'+QENG: "servingcell","NOCONN","LTE","FDD",{sc.mcc_mnc[:3]},{sc.mcc_mnc[3:]},'
                    f"1A2B3C4,123,6300,20,3,3,1A2B,{sc.rsrp},{sc.rsrq},{sc.rssi},{sc.sinr},12,-,40"
                )
                return [cell], "OK", None
            if up == "AT+QCSQ":
                if not registered:
                    return ['+QCSQ: "NOSERVICE"'], "OK", None
                return [f'+QCSQ: "LTE",{sc.rssi},{sc.rsrp},{(sc.sinr + 20) * 5},{sc.rsrq}'], "OK", None
            if up.startswith("AT+QGPSCFG="):
                return [], "OK", None
            if up == "AT+QGPS=1":
                return self._gnss_start(already_on="+CME ERROR: 504")  # Quectel: session is ongoing
            if up == "AT+QGPS?":
                return [f"+QGPS: {1 if self.gnss_on else 0}"], "OK", None
            if up == "AT+QGPSEND":
                self.gnss_on = False
                return [], "OK", None
        if sc.vendor == "simcom":
            if up == "AT+CPSI?":
                if not registered:
                    return ["+CPSI: NO SERVICE,Online"], "OK", None
                mcc, mnc = sc.mcc_mnc[:3], sc.mcc_mnc[3:]
                return [
                    f"+CPSI: LTE,Online,{mcc}-{mnc},0x1A2B,27447044,123,EUTRAN-BAND3,1300,5,5,"
                    f"{sc.rsrq * 10},{sc.rsrp * 10},{sc.rssi * 10},{sc.sinr}"
                ], "OK", None
            if up in ("AT+CGPS=1,1", "AT+CGPS=1"):
                return self._gnss_start(already_on="ERROR")
            if up == "AT+CGPS?":
                return [f"+CGPS: {1 if self.gnss_on else 0},1"], "OK", None
            if up == "AT+CGPS=0":
                self.gnss_on = False
                return [], "OK", None
        return None

    def _gnss_start(self, *, already_on: str) -> tuple[list[str], str, Any]:
        """Switch the GNSS engine on (NMEA follows shortly); a second switch-on is the vendor's error."""
        if self.gnss_on:
            return [], already_on, None
        self.gnss_on = True
        self._nmea_next = time.monotonic() + 0.2
        return [], "OK", None

    # -- NMEA --------------------------------------------------------------------------------------
    def _nmea_due(self, now: float) -> None:
        if not self.gnss_on or now < self._ready_at:
            return
        interval = max(0.05, self.scenario.nmea_interval_s)
        if now - self._nmea_next > 10 * interval:  # nobody read for a while: do not replay a backlog
            self._nmea_next = now - interval
        while self._nmea_next <= now:
            utc = datetime.now(UTC) - timedelta(seconds=now - self._nmea_next)
            for sentence in self._nmea_cycle(utc):
                self._emit(NMEA, sentence + "\r\n", self._nmea_next)
            self._nmea_next += interval

    def _nmea_cycle(self, utc: datetime) -> list[str]:
        if self._route:
            cycle = self._route[self._route_index % len(self._route)]
            self._route_index += 1
            return [restamp(raw, utc) for raw in cycle]
        return static_cycle(self.scenario.lat, self.scenario.lon, self.scenario.alt, utc)

    def writes(self) -> list[str]:
        """Commands received that change the modem's state (tests check read-only tools with it)."""
        return [c for c in self.history if _WRITE.match(c.upper())]

    # -- registry for the URL handler --------------------------------------------------------------
    def url(self, channel: str = AT) -> str:
        return f"{URL_SCHEME}://{self.name}" + ("/nmea" if channel == NMEA else "")


# -- NMEA generation ----------------------------------------------------------------------------------
def _nmea_coord(value: float, positive: str, negative: str, width: int) -> tuple[str, str]:
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    return f"{degrees:0{width}d}{minutes:09.6f}", hemisphere


def static_cycle(lat: float, lon: float, alt: float, utc: datetime) -> list[str]:
    """One 3D-fix reporting cycle at a fixed position, stamped `utc`."""
    t = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
    d = utc.strftime("%d%m%y")
    la, ns = _nmea_coord(lat, "N", "S", 2)
    lo, ew = _nmea_coord(lon, "E", "W", 3)
    return [
        build(f"GPGGA,{t},{la},{ns},{lo},{ew},1,08,0.9,{alt:.1f},M,47.0,M,,"),
        build("GPGSA,A,3,02,05,12,15,18,24,25,29,,,,,1.6,0.9,1.3"),
        build(f"GPRMC,{t},A,{la},{ns},{lo},{ew},0.0,,{d},,,A"),
        build("GPVTG,,T,,M,0.0,N,0.0,K,A"),
        build("GPGSV,2,1,08,02,40,083,41,05,17,308,38,12,07,344,30,15,62,228,44"),
        build("GPGSV,2,2,08,18,33,054,40,24,51,140,43,25,22,270,35,29,70,010,45"),
    ]


def _load_route(path: Path, limit: int = 20000) -> list[list[str]]:
    """An NMEA log split into reporting cycles (a new time of day starts a cycle)."""
    framer = NmeaFramer()
    sentences = framer.feed(strip_comments(path.read_bytes()))
    cycles: list[list[str]] = []
    current: list[str] = []
    current_time: str | None = None
    for s in sentences:
        stamp = _sentence_time(s.kind, s.fields)
        if stamp and stamp != current_time and current:
            cycles.append(current)
            current = []
        if stamp:
            current_time = stamp
        current.append(s.raw)
        if len(cycles) >= limit:
            break
    if current:
        cycles.append(current)
    if not cycles:
        raise ValueError(f"{path}: no NMEA sentences with valid checksums")
    return cycles


def _sentence_time(kind: str, f: tuple[str, ...]) -> str | None:
    index = {"GGA": 1, "RMC": 1, "GNS": 1, "ZDA": 1, "GLL": 5}.get(kind)
    if index is None or len(f) <= index:
        return None
    return f[index][:6] or None


def restamp(raw: str, utc: datetime) -> str:
    """Move a sentence to `utc` (time of day and date fields), with a fresh checksum."""
    body = raw[1 : raw.rindex("*")]
    f = body.split(",")
    kind = f[0][2:] if not f[0].startswith("P") else ""
    t = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
    index = {"GGA": 1, "RMC": 1, "GNS": 1, "ZDA": 1, "GLL": 5}.get(kind)
    if index is not None and len(f) > index and f[index]:
        f[index] = t
    if kind == "RMC" and len(f) > 9 and f[9]:
        f[9] = utc.strftime("%d%m%y")
    if kind == "ZDA" and len(f) > 4 and f[2]:
        f[2], f[3], f[4] = utc.strftime("%d"), utc.strftime("%m"), utc.strftime("%Y")
    return build(",".join(f))


# -- registry and URL handler ---------------------------------------------------------------------
_REGISTRY: dict[str, ModemEmulator] = {}
_REGISTRY_LOCK = threading.Lock()


def register(emulator: ModemEmulator) -> str:
    """Make `vigilemu://NAME` reach this emulator; returns the AT port URL."""
    register_url_handler()
    with _REGISTRY_LOCK:
        _REGISTRY[emulator.name] = emulator
    return emulator.url()


def unregister(emulator: ModemEmulator) -> None:
    with _REGISTRY_LOCK:
        if _REGISTRY.get(emulator.name) is emulator:
            del _REGISTRY[emulator.name]


def lookup(url: str) -> tuple[ModemEmulator, str]:
    """`vigilemu://NAME[/nmea][?vendor=…&scenario=…]` → (emulator, channel). An unknown NAME gets a new
    emulator built from the query, so `agent modem status --port vigilemu://demo` works in a shell."""
    parts = urlsplit(url)
    if parts.scheme != URL_SCHEME or not parts.netloc:
        raise ValueError(f"not an emulator URL: {url!r} (expected {URL_SCHEME}://NAME[/nmea])")
    channel = NMEA if parts.path.strip("/") == "nmea" else AT
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    with _REGISTRY_LOCK:
        emulator = _REGISTRY.get(parts.netloc)
        if emulator is None:
            overrides: dict[str, Any] = {}
            if "vendor" in query:
                overrides["vendor"] = query["vendor"]
            if "gnss" in query:
                overrides["gnss_on"] = query["gnss"] in ("1", "on", "true")
            emulator = ModemEmulator(
                Scenario.named(query.get("scenario", "normal"), boot_s=0.0, register_delay_s=0.0, **overrides),
                name=parts.netloc,
            )
            _REGISTRY[parts.netloc] = emulator
    return emulator, channel


def register_url_handler() -> None:
    """Teach pyserial's serial_for_url the `vigilemu://` scheme (idempotent)."""
    import serial

    package = "agent.modem.urlhandlers"
    if package not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(package)


# -- pseudo-terminal transport --------------------------------------------------------------------
class PtyLink:
    """Serves an emulator on real pseudo-terminals behind stable symlinks (like udev names).

    While the emulated device is absent the symlinks are gone and the old ptys are closed, so the
    agent's open handle fails with EIO exactly as a vanished /dev/ttyUSB does.
    """

    def __init__(self, emulator: ModemEmulator, at_link: Path, nmea_link: Path | None = None) -> None:
        self.emulator = emulator
        self.links = {AT: at_link} if nmea_link is None else {AT: at_link, NMEA: nmea_link}
        self._fds: dict[str, tuple[int, int]] = {}  # channel → (master, slave)
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PtyLink:
        self._sync()
        self._thread = threading.Thread(target=self._run, name=f"modem-emu-{self.emulator.name}-pty", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._close_all()

    def _open_all(self, generation: int) -> None:
        for channel, link in self.links.items():
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo or CR/LF translation on the device side
            os.set_blocking(master, False)
            self._fds[channel] = (master, slave)
            tmp = link.with_name(link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(os.ttyname(slave))
            tmp.replace(link)
        self._generation = generation

    def _close_all(self) -> None:
        for channel, (master, slave) in self._fds.items():
            with contextlib.suppress(FileNotFoundError):
                self.links[channel].unlink()
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()
        self._generation = None

    def _sync(self) -> None:
        emu = self.emulator
        present = emu.present()
        if self._generation is not None and (not present or emu.generation != self._generation):
            self._close_all()
        if present and self._generation is None:
            self._open_all(emu.generation)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
                if not self._fds:
                    self._stop.wait(0.02)
                    continue
                masters = {fd[0]: ch for ch, fd in self._fds.items()}
                readable, _, _ = select.select(list(masters), [], [], 0.01)
                gen = self._generation
                for fd in readable:
                    try:
                        data = os.read(fd, 4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        continue
                    if data:
                        self.emulator.host_write(masters[fd], data, gen)
                for channel, (master, _slave) in list(self._fds.items()):
                    out = self.emulator.take(channel, 4096, gen)
                    if out:
                        try:
                            os.write(master, out)
                        except BlockingIOError:
                            self.emulator.counters.dropped_bytes += len(out)
            except PortGone:
                self._close_all()
            except Exception:
                log.exception("pty transport failed; restarting its ptys")
                self._close_all()
                self._stop.wait(0.1)
