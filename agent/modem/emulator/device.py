"""The emulated modem as a device: its two serial ports, its time, its faults.

It speaks AT like a Quectel EC25, a SIMCom SIM7600 or a plain 3GPP modem (echo, final result
codes, URCs, `+CME ERROR`s), registers after a delay, streams NMEA on its own port once GNSS is
switched on, and misbehaves on cue: slow replies, URCs in the middle of a response, a missing or
PIN-locked SIM, registration denied for a while, a radio that stays stuck until it is cycled, a
stack that needs a full reset, a hang that only a power cycle cures, and a USB port that vanishes
and comes back. Tests script it directly too (`unplug()`, `hang()`, `set_fault()`…).

What a command answers is the command table's business (`commands.py`); this module frames lines,
delays answers, emits URCs and NMEA, and plays the device's life (boot, reset, vanish). It is
transport-free: `host_write`/`host_read` are the two ends of its serial ports, carried to the
agent by pyserial's `vigilemu://` URL handler or by real pseudo-terminals (`pty.py`). No thread
runs inside the modem: time-driven behaviour is evaluated lazily whenever a transport touches it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agent.modem.emulator.commands import COMMANDS
from agent.modem.emulator.nmea import load_route, restamp, static_cycle
from agent.modem.emulator.scenario import EmulatorCounters, Scenario
from agent.modem.emulator.state import ModemState
from agent.modem.emulator.table import CommandTable
from agent.modem.urlhandlers import emulator_url

log = logging.getLogger(__name__)

AT, NMEA = "at", "nmea"
_OUT_LIMIT = 64 * 1024  # bytes a port buffers for a reader that does not read (like a tty buffer)
_WRITE = re.compile(
    r"^AT(E\d|&F|Z|\+(CMEE|CPIN|CGDCONT|CFUN|C\w*REG|COPS|CGATT|CGACT|QGPS|QGPSCFG|CGPS)=|\+CRESET|\+QGPSEND)"
)


class PortGone(Exception):
    """The emulated device vanished (unplugged, rebooting); the handle the host holds is dead."""


class ModemEmulator:
    """The emulated modem. Thread-safe; every public method may be called from any thread."""

    def __init__(
        self,
        scenario: Scenario | str = "normal",
        *,
        name: str = "sim",
        table: CommandTable = COMMANDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = Scenario.named(scenario) if isinstance(scenario, str) else scenario
        self.name = name
        self.table = table
        self.counters = EmulatorCounters()
        self.history: deque[str] = deque(maxlen=500)  # commands received, newest last
        self._clock = clock
        self._cond = threading.Condition()
        self._out: dict[str, deque[tuple[float, bytes]]] = {AT: deque(), NMEA: deque()}
        self._inbuf = bytearray()
        self._route = load_route(self.scenario.route) if self.scenario.route else None
        self._route_index = 0
        now = clock()
        self.state = ModemState(self.scenario)
        self.generation = 0
        self._present_at = now  # the port exists from this instant (while _present)
        self._present = True
        self._hang_after = self.scenario.hang_after_commands
        self._vanish_after = self.scenario.vanish_after_commands
        period = self.scenario.flaky_period_s
        self._next_fault_at = now + period if period else None
        self._fault_toggle = False
        self._boot(now, announce=False)

    # what tests look at
    @property
    def contexts(self) -> dict[int, tuple[str, str]]:
        return self.state.contexts

    @property
    def gnss_on(self) -> bool:
        return self.state.gnss_on

    @property
    def pin_left(self) -> int:
        return self.state.pin_left

    # -- life of the device -----------------------------------------------------------------------
    def _boot(self, now: float, *, announce: bool = True) -> None:
        self.state.boot(now)
        self._out[AT].clear()
        self._out[NMEA].clear()
        self._inbuf.clear()
        if announce:
            for line in self.state.boot_urcs():
                self._emit(AT, f"\r\n{line}\r\n", self.state.ready_at)

    def present(self) -> bool:
        with self._cond:
            now = self._clock()
            self._tick(now)
            return self._present and now >= self._present_at

    def unplug(self, for_s: float | None = None) -> None:
        """The device disappears (cable, USB hub, crash). `for_s`: it comes back (rebooted) after that."""
        with self._cond:
            now = self._clock()
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
            now = self._clock()
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
            self._reboot(self._clock())
        return True

    def hang(self) -> None:
        """The modem stops answering anything until it is power-cycled."""
        with self._cond:
            self.state.hung = True

    def set_fault(self, *, radio_stuck: bool | None = None, needs_reset: bool | None = None) -> None:
        with self._cond:
            if radio_stuck is not None:
                self.state.radio_stuck = radio_stuck
            if needs_reset is not None:
                self.state.needs_reset = needs_reset

    def inject(self, line: str, delay: float = 0.0) -> None:
        """Send an unsolicited line on the AT port."""
        with self._cond:
            self._emit(AT, f"\r\n{line}\r\n", self._clock() + delay)

    def registration_stat(self, now: float | None = None) -> int:
        with self._cond:
            now = self._clock() if now is None else now
            return self.state.registration_stat(now, present=self._present)

    def _reboot(self, now: float) -> None:
        """Reset: the USB device leaves and comes back (a new generation of the port)."""
        self.generation += 1
        self._present = True
        self._present_at = now + self.scenario.reboot_s
        self._boot(self._present_at)
        self._cond.notify_all()

    def _tick(self, now: float) -> None:
        """Time-driven behaviour, evaluated lazily under the lock."""
        sc, state = self.scenario, self.state
        if state.reboot_at is not None and now >= state.reboot_at:
            state.reboot_at = None
            state.needs_reset = False
            state.radio_stuck = False
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
                state.radio_stuck = True
                log.info("emulated modem %s: radio stuck (a radio off/on cures it)", self.name)
            else:
                state.hung = True
                log.info("emulated modem %s: hung (a power cycle cures it)", self.name)
        if not self._present or now < self._present_at:
            return
        stat = state.registration_stat(now, present=self._present)
        if stat != state.reported_stat:
            state.reported_stat = stat
            for kind, n in state.reg_n.items():
                if n:
                    self._emit(AT, f"\r\n{state.reg_urc(kind, n, stat)}\r\n", now)

    # -- the host side of the ports ----------------------------------------------------------------
    def _check(self, generation: int | None) -> None:
        if not self._present or self._clock() < self._present_at:
            raise PortGone("device disconnected")
        if generation is not None and generation != self.generation:
            raise PortGone("device disconnected (re-enumerated)")

    def open_generation(self) -> int:
        """Open a port now: the handle is valid until the device leaves. Raises PortGone if absent."""
        with self._cond:
            self._tick(self._clock())
            self._check(None)
            return self.generation

    def host_write(self, channel: str, data: bytes, generation: int | None = None) -> None:
        with self._cond:
            now = self._clock()
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

    def host_read(self, channel: str, size: int, timeout: float | None, generation: int | None = None) -> bytes:
        """Up to `size` bytes, waiting up to `timeout` for the first; like a serial read.

        The read timeout is the host's, in real time even when the device runs on a test's clock."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            out = bytearray()
            while True:
                now = self._clock()
                self._due(channel, now, generation)
                out += self._take(channel, size - len(out), now)
                left = None if deadline is None else deadline - time.monotonic()
                if len(out) >= size or (left is not None and left <= 0):
                    return bytes(out)
                wait = 0.05 if left is None else min(0.05, left)
                nxt = self._next_due(channel)
                if nxt is not None:
                    wait = min(wait, max(0.001, nxt - now))
                self._cond.wait(wait)

    def pending(self, channel: str, generation: int | None = None) -> int:
        with self._cond:
            now = self._clock()
            self._due(channel, now, generation)
            return sum(len(d) for due, d in self._out[channel] if due <= now)

    def take(self, channel: str, size: int, generation: int | None = None) -> bytes:
        """Non-blocking read (the pty transport polls)."""
        with self._cond:
            now = self._clock()
            self._due(channel, now, generation)
            return self._take(channel, size, now)

    def clear_input(self, channel: str) -> None:
        with self._cond:
            now = self._clock()
            self._out[channel] = deque((due, d) for due, d in self._out[channel] if due > now)

    def _due(self, channel: str, now: float, generation: int | None) -> None:
        self._tick(now)
        self._check(generation)
        if channel == NMEA:
            self._nmea_due(now)

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
        if channel == NMEA and self.state.gnss_on:
            due = self.state.nmea_next if due is None else min(due, self.state.nmea_next)
        return due

    def _emit(self, channel: str, text: str, due: float) -> None:
        queue = self._out[channel]
        # keep time order even when a delayed answer is followed by an immediate URC
        if queue and queue[-1][0] > due:
            due = queue[-1][0]
        queue.append((due, text.encode("utf-8")))
        while sum(len(d) for _, d in queue) > _OUT_LIMIT:
            _, dropped = queue.popleft()
            self.counters.dropped_bytes += len(dropped)

    # -- AT commands -------------------------------------------------------------------------------
    def _command_line(self, raw: str, now: float) -> None:
        state, sc = self.state, self.scenario
        if now < state.ready_at:
            return  # still booting: the AT port swallows input
        self.counters.commands += 1
        self.history.append(raw)
        if self._vanish_after is not None and self.counters.commands >= self._vanish_after:
            self._vanish_after = None
            self.counters.unplugs += 1
            self.generation += 1
            self._present_at = now + sc.vanish_for_s
            self._boot(self._present_at)
            return
        if self._hang_after is not None and self.counters.commands >= self._hang_after:
            self._hang_after = None
            state.hung = True
        if state.hung:
            return
        delay = sc.reply_delay_s + next(
            (extra for prefix, extra in sc.slow_commands.items() if raw.upper().startswith(prefix)), 0.0
        )
        if state.echo:
            self._emit(AT, raw + "\r", now)
        reply = self.table.answer(raw, now=now, state=state, counters=self.counters)
        due = now + delay
        body = "".join(f"\r\n{line}\r\n" for line in reply.lines)
        mid = ""
        if sc.urc_mid_response and (raw.endswith("?") or raw.upper() in ("AT+CSQ", "AT+QCSQ")):
            stat = state.registration_stat(now, present=self._present)
            cereg = state.reg_urc("CEREG", state.reg_n["CEREG"] or 1, stat)
            mid = f'\r\n{cereg}\r\n\r\n+QIND: "csq",{sc.csq},99\r\n'
            if reply.lines:  # one URC before the answer, the rest between the answer and OK
                body = f"\r\n+CGEV: ME PDN ACT 1\r\n{body}"
        self._emit(AT, f"{body}{mid}\r\n{reply.final}\r\n", due)
        for line in reply.urcs:
            self._emit(AT, f"\r\n{line}\r\n", due)
        if reply.reboot:
            state.reboot_at = due + 0.05  # the modem answers, then drops off the bus

    # -- NMEA --------------------------------------------------------------------------------------
    def _nmea_due(self, now: float) -> None:
        state = self.state
        if not state.gnss_on or now < state.ready_at:
            return
        interval = max(0.05, self.scenario.nmea_interval_s)
        if now - state.nmea_next > 10 * interval:  # nobody read for a while: do not replay a backlog
            state.nmea_next = now - interval
        while state.nmea_next <= now:
            utc = datetime.now(UTC) - timedelta(seconds=now - state.nmea_next)
            for sentence in self._nmea_cycle(utc):
                self._emit(NMEA, sentence + "\r\n", state.nmea_next)
            state.nmea_next += interval

    def _nmea_cycle(self, utc: datetime) -> list[str]:
        if self._route:
            cycle = self._route[self._route_index % len(self._route)]
            self._route_index += 1
            return [restamp(raw, utc) for raw in cycle]
        return static_cycle(self.scenario.lat, self.scenario.lon, self.scenario.alt, utc)

    def writes(self) -> list[str]:
        """Commands received that change the modem's state (tests check read-only tools with it)."""
        return [c for c in self.history if _WRITE.match(c.upper())]

    def url(self, channel: str = AT) -> str:
        """The pyserial URL of one of its ports (reaches it once `registry.register`ed)."""
        return emulator_url(self.name, nmea=channel == NMEA)
