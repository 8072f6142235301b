"""Local outputs rules can drive: a GPIO line on a Raspberry Pi (a relay, a lamp, a siren), or a log line.

GPIO libraries are imported only when an output is opened (never at import time): gpiozero first,
else lgpio; on a machine without either, a gpio output degrades to log-only with one warning. A
pulse keeps the line active for a while; one named thread turns lines off at their deadlines,
and every line is switched off when the stage stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.config.rules import OutputConfig
from agent.lifecycle import remaining, resolve_deadline

log = logging.getLogger(__name__)


class Output(Protocol):
    name: str

    def set(self, active: bool) -> None: ...

    def close(self) -> None: ...


class LogOutput:
    """Only logs; what a gpio output becomes where there is no GPIO."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = False
        self.changes = 0

    def set(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            self.changes += 1
            log.info("output %s %s", self.name, "on" if active else "off")

    def close(self) -> None:
        self.set(False)


class GpioZeroOutput:
    def __init__(self, cfg: OutputConfig) -> None:
        from gpiozero import DigitalOutputDevice  # lazy: only on a Pi with an output configured

        self.name = cfg.name
        self._device = DigitalOutputDevice(cfg.pin, active_high=cfg.active_high, initial_value=False)

    def set(self, active: bool) -> None:
        self._device.value = bool(active)

    def close(self) -> None:
        self._device.off()
        self._device.close()


class LgpioOutput:
    def __init__(self, cfg: OutputConfig) -> None:
        import lgpio  # lazy, as above

        self.name = cfg.name
        self._lgpio = lgpio
        self._pin = int(cfg.pin or 0)
        self._active_level = 1 if cfg.active_high else 0
        self._chip = lgpio.gpiochip_open(0)
        lgpio.gpio_claim_output(self._chip, self._pin, 1 - self._active_level)

    def set(self, active: bool) -> None:
        level = self._active_level if active else 1 - self._active_level
        self._lgpio.gpio_write(self._chip, self._pin, level)

    def close(self) -> None:
        self.set(False)
        self._lgpio.gpiochip_close(self._chip)


def open_output(cfg: OutputConfig) -> Output:
    """The best implementation available here; never raises for a missing GPIO library."""
    if cfg.kind == "log":
        return LogOutput(cfg.name)
    problems = []
    for factory in (GpioZeroOutput, LgpioOutput):
        try:
            return factory(cfg)
        except Exception as exc:  # ImportError off a Pi; gpiozero raises its own errors without pins
            problems.append(f"{factory.__name__}: {exc}")
    log.warning("output %s: no usable GPIO here (%s); logging only", cfg.name, "; ".join(problems))
    return LogOutput(cfg.name)


class OutputBank:
    """Named outputs with timed pulses; a lifecycle object owning the `outputs` thread."""

    name = "outputs"

    def __init__(self, configs: Sequence[OutputConfig], opener: Callable[[OutputConfig], Output] = open_output) -> None:
        self._configs = list(configs)
        self._opener = opener
        self._outputs: dict[str, Output] = {}
        self._deadlines: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._running = False
        self._thread: threading.Thread | None = None
        self.pulses = 0

    def start(self) -> OutputBank:
        self._running = True
        self._open_missing()
        return self

    def reconfigure(self, configs: Sequence[OutputConfig]) -> None:
        """Apply a new output list live: changed or removed outputs are switched off and closed,
        new ones are opened (if the bank is running; otherwise `start()` opens them)."""
        wanted = {c.name: c for c in configs}
        with self._cond:
            current = {c.name: c for c in self._configs}
            gone = [n for n in current if wanted.get(n) != current[n]]
            closing = [self._outputs.pop(n) for n in gone if n in self._outputs]
            for n in gone:
                self._deadlines.pop(n, None)
            self._configs = list(configs)
            running = self._running and not self._stop
        for output in closing:
            try:
                output.close()
            except Exception:
                log.exception("closing output %s failed", output.name)
        if running:
            self._open_missing()

    def _open_missing(self) -> None:
        opened = {c.name: self._opener(c) for c in self._configs if c.name not in self._outputs}
        with self._cond:
            self._outputs.update(opened)
            need_thread = self._thread is None and bool(self._outputs)
            if need_thread:
                self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)
        if need_thread:
            assert self._thread is not None
            self._thread.start()

    def pulse(self, name: str, seconds: float) -> bool:
        """Make output `name` active for `seconds` (extends a running pulse); False if unknown."""
        with self._cond:
            output = self._outputs.get(name)
            if output is None or self._stop:
                return False
            self._deadlines[name] = max(self._deadlines.get(name, 0.0), time.monotonic() + seconds)
            self.pulses += 1
            # switched under the lock: the `outputs` thread cannot switch it off between these lines
            self._safe_set(output, True)
            self._cond.notify_all()
        return True

    def _safe_set(self, output: Output, active: bool) -> None:
        try:
            output.set(active)
        except Exception:
            log.exception("output %s failed", output.name)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                due = [n for n, d in self._deadlines.items() if d <= now]
                for n in due:
                    del self._deadlines[n]
                    output = self._outputs.get(n)  # reconfigure() may have removed (and closed) it
                    if output is not None:
                        self._safe_set(output, False)
                if not due:
                    wait = min(self._deadlines.values(), default=now + 3600) - now
                    self._cond.wait(max(0.01, wait))

    def status(self) -> dict[str, object]:
        with self._cond:
            return {"outputs": sorted(self._outputs), "active": sorted(self._deadlines), "pulses": self.pulses}

    def stop(self, deadline: float | None = None) -> None:
        """Switch every output off and stop the pulse thread by `deadline`."""
        with self._cond:
            self._stop = True
            self._deadlines.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(remaining(resolve_deadline(deadline)))
            self._thread = None
        for output in self._outputs.values():
            try:
                output.close()
            except Exception:
                log.exception("closing output %s failed", output.name)
