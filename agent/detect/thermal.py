"""Adaptive detector rate: a hot node slows its detector down gracefully instead of being throttled.

A Pi in a box on a pole in summer gets hot (field notes); its firmware then halves the CPU clock at
80 °C and more at 85 °C, which makes every frame slow and the capture drop frames unevenly. Running
the detector less often is the better trade: the tracker keeps tracks through the gaps, the
motion gate still sees every frame, events still come. The governor reads the CPU temperature and
the firmware's throttling flags (agent.health.system, the same probe the telemetry uses) and caps
the detector's rate in three steps:

- ``normal``: no cap;
- ``warm`` (from `warm_c`, or the firmware reports under-voltage, a capped frequency or its soft
  limit): half the capture rate;
- ``hot`` (from `hot_c`, or the firmware is throttling): `min_fps`.

It heats up at once and cools down one step at a time, `resume_margin_c` below the threshold and
no sooner than `hold_s` after the last change, so the rate does not flap as the CPU cools. Every
change is logged, and `status()` (the status page, the `status` command) says what it did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.config.schema import ThermalConfig
from agent.health.system import cpu_temperature_c, decode_throttled, read_throttled
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.motion import MotionGate

if TYPE_CHECKING:
    from agent.app import Agent, Running

log = logging.getLogger(__name__)

LEVELS = ("normal", "warm", "hot")
HOT_FLAGS = frozenset({"throttled"})
WARM_FLAGS = frozenset({"under_voltage", "arm_frequency_capped", "soft_temperature_limit"})
THROTTLED_EVERY_S = 30.0  # vcgencmd is a process spawn; the flags change slowly


class ThermalGovernor:
    """Sets `gate.max_detect_fps` from the CPU's temperature and throttling flags; a stage."""

    name = "thermal"

    def __init__(
        self,
        cfg: Callable[[], ThermalConfig],
        gate: Callable[[], MotionGate],
        base_fps: Callable[[], float],
        *,
        read_temp: Callable[[], float | None] = cpu_temperature_c,
        read_flags: Callable[[], int | None] = read_throttled,
        clock: Callable[[], float] = time.monotonic,
        flags_every_s: float = THROTTLED_EVERY_S,
    ) -> None:
        self._cfg = cfg
        self._gate = gate
        self._base_fps = base_fps
        self.read_temp = read_temp
        self.read_flags = read_flags
        self._clock = clock
        self.flags_every_s = flags_every_s
        self.level = 0
        self.since = clock()
        self.changes = 0
        self.temp_c: float | None = None
        self.flags: list[str] = []
        self._flags_at: float | None = None
        self._loop = BackgroundLoop("thermal", self._run)
        self._stop = self._loop.stopping

    @property
    def state(self) -> str:
        return LEVELS[self.level]

    def cap(self) -> float | None:
        """The detector rate cap for the current level (None: no cap)."""
        cfg = self._cfg()
        if not cfg.enabled or self.level == 0:
            return None
        if self.level == 1:
            return max(cfg.min_fps, self._base_fps() / 2.0)
        return cfg.min_fps

    def _sample(self, now: float) -> None:
        self.temp_c = self.read_temp()
        if self._flags_at is None or now - self._flags_at >= self.flags_every_s:
            self._flags_at = now
            raw = self.read_flags()
            self.flags = [f for f in decode_throttled(raw) if not f.endswith("_occurred")] if raw else []

    def _target(self, cfg: ThermalConfig) -> int:
        """The level the readings call for, with the cooling margin applied when below the current one."""
        temp, flags = self.temp_c, set(self.flags)

        def at_least(threshold: float) -> bool:
            return temp is not None and temp >= threshold

        raw = (
            2
            if at_least(cfg.hot_c) or flags & HOT_FLAGS
            else 1
            if at_least(cfg.warm_c) or flags & WARM_FLAGS
            else 0
        )
        if raw >= self.level:
            return raw
        # cooling: one step, once the temperature is clearly below the threshold of the current level
        threshold = cfg.hot_c if self.level == 2 else cfg.warm_c
        if at_least(threshold - cfg.resume_margin_c):
            return self.level
        return self.level - 1

    def poll(self) -> str:
        """Read the sensors and apply the cap; returns the level's name."""
        cfg = self._cfg()
        now = self._clock()
        self._sample(now)
        target = self._target(cfg) if cfg.enabled else 0
        if target < self.level and cfg.enabled and now - self.since < cfg.hold_s:
            target = self.level
        if target != self.level:
            previous, self.level = self.level, target
            self.since = now
            self.changes += 1
            self._report(previous)
        self._gate().max_detect_fps = self.cap()
        return self.state

    def _report(self, previous: int) -> None:
        reading = f"CPU {self.temp_c:.1f} °C" if self.temp_c is not None else "CPU temperature unknown"
        if self.flags:
            reading += f", firmware: {', '.join(self.flags)}"
        cap = self.cap()
        if self.level > previous:
            log.warning("%s: detector slowed to %.1f runs/s (%s)", reading, cap or 0.0, self.state)
        elif cap is None:
            log.info("%s: detector back to full rate", reading)
        else:
            log.info("%s: detector sped up to %.1f runs/s (%s)", reading, cap, self.state)

    # -- stage ----------------------------------------------------------------------------------------
    def start(self) -> ThermalGovernor:
        self._loop.start()
        return self

    def _run(self, _loop: BackgroundLoop) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a sensor oddity must never take the agent down
                log.exception("thermal check failed")
            self._stop.wait(self._cfg().interval_s)

    def request_stop(self) -> None:
        self._loop.request_stop()

    def stop(self, deadline: float | None = None) -> None:
        self._loop.stop(resolve_deadline(deadline))
        self._gate().max_detect_fps = None

    def status(self) -> dict[str, Any]:
        gate = self._gate()
        return {
            "enabled": self._cfg().enabled,
            "state": self.state,
            "temp_c": self.temp_c,
            "throttled": list(self.flags),
            "detect_fps_cap": self.cap(),
            "since_s": round(self._clock() - self.since, 1),
            "changes": self.changes,
            "capped_frames": gate.stats.capped,
        }


def build(agent: Agent, running: Running) -> ThermalGovernor | None:
    """Built unless disabled; on machines without a thermal zone or vcgencmd it stays `normal`."""
    if not agent.config.detect.thermal.enabled:
        return None
    return ThermalGovernor(
        lambda: agent.config.detect.thermal,
        lambda: running.pipeline.gate,
        lambda: agent.config.capture.fps,
    )
