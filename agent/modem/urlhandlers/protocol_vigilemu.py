"""pyserial handler for `vigilemu://NAME[/nmea][?vendor=…&scenario=…]`: the built-in modem emulator.

It behaves like a USB serial device: opening it while the emulated modem is absent fails, and a
handle opened before the device re-enumerated fails on its next read or write. pyserial imports
this module only when such a URL is opened; it is the one place outside tests that imports the
emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from agent.modem import emulator as emu

if TYPE_CHECKING:
    from typing_extensions import Buffer


class Serial(SerialBase):
    """A serial port whose other end is a ModemEmulator (see agent.modem.emulator)."""

    def open(self) -> None:
        if self.port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        try:
            self._emu, self._channel = emu.lookup(str(self.port))
            self._generation = self._emu.open_generation()
        except (OSError, ValueError, emu.PortGone) as exc:  # OSError, ValueError: a route that cannot be read
            raise SerialException(f"could not open port {self.port}: {exc}") from exc
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _reconfigure_port(self) -> None:
        """Baud rate and framing mean nothing to the emulator."""

    def _guard(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    @property
    def in_waiting(self) -> int:
        self._guard()
        try:
            return self._emu.pending(self._channel, self._generation)
        except emu.PortGone as exc:
            raise SerialException(str(exc)) from None

    def read(self, size: int = 1) -> bytes:
        self._guard()
        if size <= 0:
            return b""
        try:
            return self._emu.host_read(self._channel, size, self.timeout, self._generation)
        except emu.PortGone as exc:
            raise SerialException(str(exc)) from None

    def write(self, data: Buffer, /) -> int:
        self._guard()
        payload = bytes(data)
        try:
            self._emu.host_write(self._channel, payload, self._generation)
        except emu.PortGone as exc:
            raise SerialException(str(exc)) from None
        return len(payload)

    def reset_input_buffer(self) -> None:
        self._guard()
        self._emu.clear_input(self._channel)

    def reset_output_buffer(self) -> None:
        self._guard()

    def flush(self) -> None:
        self._guard()

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


__all__ = ["Serial"]
