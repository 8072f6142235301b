"""Real pseudo-terminals for an emulated modem: the agent's unchanged pyserial code, termios and all.

The path is a symlink that disappears and reappears like a udev name when the modem re-enumerates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import tty
from pathlib import Path

from agent.modem.emulator.device import AT, NMEA, ModemEmulator, PortGone

log = logging.getLogger(__name__)


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
