"""The GNSS reader: one named thread turning an NMEA port into fixes, clock readings and status.

It opens the port through the caller's opener (a device, a udev name or a pyserial URL), frames and
merges what arrives, hands a cycle over when a newer timestamp starts the next one or when the line
goes quiet, and reopens with a capped backoff when the port vanishes (USB receivers re-enumerate,
modem NMEA ports disappear while the modem reboots). GNSS time reaches the clock only from a real
fix, after GPS week-rollover correction, and only when it is plausible.

Only a failing read or open means the port is lost. What the receiver sent can never be taken for
that: bad sentences are counted and skipped by the framer and the tracker, and should decoding a
chunk still fail, the chunk is dropped, counted (`decode_errors`) and reading goes on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.clock import PLAUSIBLE_AFTER, Clock
from agent.gnss.fix import MODE_2D, Fix, FixTracker, correct_rollover
from agent.gnss.nmea import NmeaFramer
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.urls import scrub_userinfo

log = logging.getLogger(__name__)

QUIET_GAP_S = 0.3  # a receiver's burst is continuous; a gap this long means the cycle is complete


class GnssReader:
    """Owns the NMEA port and the `gnss-reader` thread; start()/stop() like a stage."""

    def __init__(
        self,
        opener: Callable[[], Any],
        *,
        port_label: str = "",
        clock: Clock | None = None,
        reopen_max_s: float = 30.0,
        on_fix: Callable[[Fix], None] | None = None,
        name: str = "gnss",
    ) -> None:
        self._opener = opener
        self.port_label = port_label
        self.clock = clock
        self.reopen_max_s = reopen_max_s
        self.on_fix = on_fix
        self.name = name
        self.framer = NmeaFramer()
        self.tracker = FixTracker()
        self._lock = threading.Lock()
        self._latest: Fix | None = None
        self._position: Fix | None = None
        self._state = "starting"
        self._message = ""
        self._opens = 0
        self._clock_fed = 0
        self._clock_rejected = 0
        self._decode_errors = 0
        self._last_rx: float | None = None
        self._loop = BackgroundLoop(f"{name}-reader", self._run)
        self._stop = self._loop.stopping
        self._port: Any = None
        self._fix_event = threading.Condition(self._lock)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> GnssReader:
        self._loop.start()
        return self

    def request_stop(self) -> None:
        self._loop.request_stop()

    def stop(self, deadline: float | None = None) -> None:
        """Stop reading by `deadline`; a read stuck in a hung port is left to the daemon thread."""
        self._loop.stop(resolve_deadline(deadline))
        self._close()

    # -- what it knows ----------------------------------------------------------------------------
    def latest(self) -> Fix | None:
        """The last completed reporting cycle (may be a no-fix one)."""
        with self._lock:
            return self._latest

    def last_position(self) -> Fix | None:
        """The last cycle with a 2D/3D position (its `mono` says how old it is)."""
        with self._lock:
            return self._position

    def wait_for(self, predicate: Callable[[Fix], bool], timeout: float) -> Fix | None:
        """Block until a cycle satisfies `predicate` (tests, `agent modem status`)."""
        deadline = time.monotonic() + timeout
        with self._fix_event:
            while True:
                if self._latest is not None and predicate(self._latest):
                    return self._latest
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._fix_event.wait(remaining)

    def wait_state(self, state: str, timeout: float) -> bool:
        """Block until the reader reaches `state` (absent, no_data, fix, no_fix)."""
        deadline = time.monotonic() + timeout
        with self._fix_event:
            while self._state != state:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._fix_event.wait(remaining)
            return True

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            latest, position = self._latest, self._position
            state = self._state
            if state in ("fix", "no_fix", "no_data") and self._last_rx is not None and now - self._last_rx > 5.0:
                state = "no_data"
            return {
                "state": state,
                "message": self._message,
                "port": self.port_label,
                "fix": {**latest.as_dict(), "age_s": round(now - latest.mono, 1)} if latest else None,
                "position_age_s": round(now - position.mono, 1) if position else None,
                "clock": {"fed": self._clock_fed, "rejected": self._clock_rejected},
                "counters": {
                    **self.framer.stats.as_dict(),
                    **self.tracker.stats.as_dict(),
                    "opens": self._opens,
                    "decode_errors": self._decode_errors,
                },
            }

    # -- the thread -------------------------------------------------------------------------------
    def _run(self, _loop: BackgroundLoop) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._port = self._opener()
            except Exception as exc:  # SerialException/OSError: not (yet) there
                self._set_state("absent", scrub_userinfo(f"cannot open {self.port_label}: {exc}"))
                self._stop.wait(backoff * random.uniform(0.9, 1.1))
                backoff = min(backoff * 2, self.reopen_max_s)
                continue
            self._opens += 1
            backoff = 1.0
            self._set_state("no_data", "")
            log.info("GNSS port %s open", self.port_label)
            try:
                self._read_loop()
            except Exception as exc:  # the port vanished under us
                if not self._stop.is_set():
                    self._set_state("absent", scrub_userinfo(f"port {self.port_label} lost: {exc}"))
            finally:
                self._close()
                self.framer.flush()
                fix = self.tracker.end_cycle(time.monotonic())
                if fix is not None:
                    self._publish(fix)
            self._stop.wait(0.5 * random.uniform(0.9, 1.1))

    def _read_loop(self) -> None:
        port = self._port
        port.timeout = 0.1
        while not self._stop.is_set():
            data = port.read(min(max(port.in_waiting, 1), 4096))  # raises when the port is gone
            now = time.monotonic()
            if data:
                with self._lock:
                    self._last_rx = now
                self._decode(data, now)
            elif self.tracker.in_cycle and self._last_rx is not None and now - self._last_rx >= QUIET_GAP_S:
                fix = self.tracker.end_cycle(now)
                if fix is not None:
                    self._publish(fix)

    def _decode(self, data: bytes, now: float) -> None:
        """Frame and merge one chunk. Never raises: input is never a reason to drop the port."""
        try:
            for sentence in self.framer.feed(data):
                fix = self.tracker.feed(sentence, now)
                if fix is not None:
                    self._publish(fix)
        except Exception:
            self._decode_errors += 1
            if self._decode_errors <= 10 or self._decode_errors % 1000 == 0:
                log.warning("GNSS: could not decode input from %s (%d so far); skipped",
                            self.port_label, self._decode_errors, exc_info=True)

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:
                log.debug("closing GNSS port failed", exc_info=True)

    def _publish(self, fix: Fix) -> None:
        with self._fix_event:
            was = self._latest.mode if self._latest else None
            self._latest = fix
            if fix.has_position:
                self._position = fix
            self._state = "fix" if fix.has_position else "no_fix"
            self._fix_event.notify_all()
        if was != fix.mode:
            log.info("GNSS: %s", {1: "no fix", 2: "2D fix", 3: "3D fix"}.get(fix.mode, "mode ?"))
        if self.clock is not None and fix.mode >= MODE_2D and fix.time is not None:
            corrected = correct_rollover(fix.time, PLAUSIBLE_AFTER)
            if corrected - fix.time > 0:
                log.debug("GNSS date corrected for GPS week rollover (+%d weeks)", (corrected - fix.time) // 604800)
            if corrected >= PLAUSIBLE_AFTER:
                self.clock.note_gnss_time(corrected, fix.mono)
                self._clock_fed += 1
            else:
                self._clock_rejected += 1
        if self.on_fix is not None:
            try:
                self.on_fix(fix)
            except Exception:
                log.exception("GNSS fix listener failed")

    def _set_state(self, state: str, message: str) -> None:
        with self._fix_event:
            changed = state != self._state
            self._state, self._message = state, message
            self._fix_event.notify_all()
        if changed and state == "absent":
            log.warning("GNSS: %s", message)
