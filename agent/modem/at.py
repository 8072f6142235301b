"""AT command channel: the engine that runs the AT protocol (`atproto.py`) over a pyserial port.

The engine owns the port (opened by the caller, e.g. with `open_port`, so tests plug a scripted
modem in through the same path), one named reader thread, and a lock that lets exactly one command
be in flight across all users of the port. A modem that stops answering costs the caller a timeout
per command, never a hang; a port that vanishes (USB re-enumeration) closes the engine and fails
the command in flight, and the owner reopens it. The protocol's names are re-exported here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.modem.atproto import (
    CME_ERRORS,
    MAX_LINE,
    SETTLE_S,
    URC_EXACT,
    URC_PREFIXES,
    AtError,
    AtProtocol,
    AtResponse,
    AtTimeout,
    Final,
    PortClosed,
    ProtocolStats,
    Urc,
    default_timeout,
    is_final,
    is_urc,
    redact,
    response_prefix,
)

log = logging.getLogger(__name__)

class SerialLike(Protocol):
    """What the engine needs from a pyserial port."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...

    @property
    def in_waiting(self) -> int: ...


UrcListener = Callable[[str], None]


class AtSession(Protocol):
    """What set-up, polling, recovery and vendor code need from an AT channel (an `AtEngine`; unit
    tests may pass a fake)."""

    def command(
        self, command: str, *, timeout: float | None = None, prefix: str | None = None, check: bool = True
    ) -> AtResponse: ...

    def ping(self, timeout: float = 2.0) -> bool: ...


class AtEngine:
    """Runs AT commands over an open port, one at a time, and routes URCs to listeners.

    Listeners run on the reader thread and must not block (hand the line to a queue). Stop the
    engine with stop(); it closes the port it was given.
    """

    def __init__(
        self,
        port: SerialLike,
        *,
        name: str = "modem",
        default_timeout_s: float = 5.0,
        on_closed: Callable[[str], None] | None = None,
    ) -> None:
        self.port = port
        self.name = name
        self.default_timeout_s = default_timeout_s
        self.on_closed = on_closed
        self.protocol = AtProtocol()
        self._listeners: list[UrcListener] = []
        self._lock = threading.Lock()  # one command in flight across all users of the port
        self._cond = threading.Condition()
        self._result: AtResponse | None = None
        self._closed_reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.commands = 0
        self.last_rx_mono: float | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> AtEngine:
        timeout = getattr(self.port, "timeout", None)
        if timeout is None or timeout > 0.2:
            self.port.timeout = 0.1  # bounded reads, so stop() is prompt
        self._thread = threading.Thread(target=self._read_loop, name=f"{self.name}-at-reader", daemon=True)
        self._thread.start()
        return self

    def abort(self) -> None:
        """Fail the command in flight now and accept no more (the port stays open until stop())."""
        self._stop.set()
        self._mark_closed("stopped", notify=False)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._mark_closed("stopped", notify=False)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        try:
            self.port.close()
        except Exception:
            log.debug("closing %s port failed", self.name, exc_info=True)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def add_urc_listener(self, listener: UrcListener) -> None:
        self._listeners.append(listener)

    def remove_urc_listener(self, listener: UrcListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- commands ---------------------------------------------------------------------------------
    def command(
        self,
        command: str,
        *,
        timeout: float | None = None,
        prefix: str | None = None,
        check: bool = True,
    ) -> AtResponse:
        """Send one command and wait for its final result.

        Raises AtError for error results (unless check=False), AtTimeout when no final result comes
        in time, PortClosed when the port is gone.
        """
        wait = timeout if timeout is not None else default_timeout(command, self.default_timeout_s)
        with self._lock:
            if self._closed_reason is not None:
                raise PortClosed(self._closed_reason)
            log.debug("%s → %s", self.name, redact(command))
            with self._cond:
                # a timed-out command may still be answering: let it finish (briefly) so its late
                # answer is not taken for this command's
                settle = time.monotonic() + min(SETTLE_S, self.protocol.abandoned_wait)
                while self.protocol.abandoned and self._closed_reason is None:
                    remaining = settle - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._result = None
                self.protocol.begin(command, prefix)
            try:
                self.port.write(command.encode("ascii", errors="replace") + b"\r")
            except Exception as exc:  # pyserial raises SerialException/OSError when the device is gone
                self._mark_closed(f"write failed: {exc}")
                raise PortClosed(str(exc)) from None
            self.commands += 1
            deadline = time.monotonic() + wait
            with self._cond:
                while not self._settled():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.protocol.abandon(wait)
                        log.debug("%s: %s timed out", self.name, redact(command))
                        raise AtTimeout(f"{redact(command)}: no answer within {wait:g}s")
                    self._cond.wait(remaining)
                result = self._take_result()
                if result is None:
                    raise PortClosed(self._closed_reason or "closed")
            log.debug("%s ← %s %s", self.name, " | ".join(result.lines), result.final)
        if check and not result.ok:
            raise AtError(command, result.final, result.lines)
        return result

    def _settled(self) -> bool:
        """The command in flight has its final result, or the port closed under it (under `_cond`)."""
        return self._result is not None or self._closed_reason is not None

    def _take_result(self) -> AtResponse | None:
        """The final result the reader handed over (under `_cond`), cleared for the next command."""
        result, self._result = self._result, None
        return result

    def ping(self, timeout: float = 2.0) -> bool:
        """A bare `AT`: True when the modem answers at all."""
        try:
            self.command("AT", timeout=timeout, check=False)
        except (AtTimeout, PortClosed):
            return False
        return True

    # -- reading ----------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        port = self.port
        try:
            while not self._stop.is_set():
                try:
                    waiting = port.in_waiting
                    data = port.read(min(max(waiting, 1), 4096))
                except Exception as exc:  # SerialException, OSError (EIO when the device vanished)
                    if not self._stop.is_set():
                        self._mark_closed(f"read failed: {exc}")
                    return
                if not data:
                    continue
                self.last_rx_mono = time.monotonic()
                with self._cond:
                    events = self.protocol.feed(data)
                    for event in events:
                        if isinstance(event, Final):
                            self._result = event.response
                    self._cond.notify_all()
                for event in events:
                    if isinstance(event, Urc):
                        self._dispatch(event.line)
        except Exception:  # a bug here must surface, and must not leave a command hanging
            log.exception("%s AT reader failed", self.name)
            self._mark_closed("reader failed")

    def _dispatch(self, line: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(line)
            except Exception:
                log.exception("URC listener failed on %r", line)

    def _mark_closed(self, reason: str, *, notify: bool = True) -> None:
        with self._cond:
            if self._closed_reason is not None:
                return
            self._closed_reason = reason
            self._cond.notify_all()
        if notify and self.on_closed is not None:
            try:
                self.on_closed(reason)
            except Exception:
                log.exception("on_closed callback failed")


def open_port(url: str, baudrate: int = 115200, **kwargs: Any) -> Any:
    """Open a serial port by URL (a device path, a udev name, `vigilemu://…`, `rfc2217://…`).

    Imported lazily so nothing touches pyserial (or hardware) at import time.
    """
    import serial

    from agent.modem.urlhandlers import register

    register()  # `vigilemu://` reaches the emulator; pyserial imports it only for such a URL
    return serial.serial_for_url(url, baudrate=baudrate, timeout=0.1, write_timeout=2.0, **kwargs)


__all__ = [
    "CME_ERRORS",
    "MAX_LINE",
    "SETTLE_S",
    "URC_EXACT",
    "URC_PREFIXES",
    "AtEngine",
    "AtError",
    "AtProtocol",
    "AtResponse",
    "AtSession",
    "AtTimeout",
    "Final",
    "PortClosed",
    "ProtocolStats",
    "SerialLike",
    "Urc",
    "UrcListener",
    "default_timeout",
    "is_final",
    "is_urc",
    "open_port",
    "redact",
    "response_prefix",
]
