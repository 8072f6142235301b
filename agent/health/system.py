"""What the machine itself is doing: CPU, temperature and throttling, memory, disk.

Everything is read from /proc and /sys (no psutil on the node), and every source is optional: a
laptop has no `vcgencmd`, a container may have no thermal zone. Field notes: thermal throttling is
normal in a box on a pole in summer, so it is reported, never treated as an error.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THERMAL = Path("/sys/class/thermal")
PREFERRED_ZONES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "soc-thermal")
THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
    16: "under_voltage_occurred",
    17: "arm_frequency_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}
VCGENCMD_EVERY_S = 30.0


def cpu_temperature_c(root: Path = THERMAL) -> float | None:
    """The CPU's temperature from the kernel's thermal zones (the CPU zone when named), or None."""
    zones = sorted(root.glob("thermal_zone*"))
    readings: list[tuple[int, float]] = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip()
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        rank = PREFERRED_ZONES.index(kind) if kind in PREFERRED_ZONES else len(PREFERRED_ZONES)
        readings.append((rank, milli / 1000.0))
    if not readings:
        return None
    return round(min(readings)[1], 1)


def decode_throttled(value: int) -> list[str]:
    return [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]


def read_throttled(timeout: float = 2.0) -> int | None:
    """`vcgencmd get_throttled` on a Raspberry Pi (throttled=0x50005), or None where it does not exist."""
    binary = shutil.which("vcgencmd")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "get_throttled"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    if out.returncode != 0 or "=" not in text:
        return None
    try:
        return int(text.split("=", 1)[1], 16)
    except ValueError:
        return None


def rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _system_cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        values = [float(v) for v in fields]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values[:8])
    return total - idle, total


class SystemProbe:
    """Samples CPU use between calls (at least `min_interval_s` apart, else the last figures)."""

    def __init__(self, disk_path: Path, *, min_interval_s: float = 1.0) -> None:
        self.disk_path = disk_path
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_mono = time.monotonic()
        self._last_proc = sum(os.times()[:2])
        self._last_sys = _system_cpu_times()
        self._figures: dict[str, float | None] = {"process": None, "system": None}
        self._throttled: int | None = None
        self._throttled_at = -1e9

    def _cpu(self) -> dict[str, float | None]:
        now = time.monotonic()
        if now - self._last_mono < self.min_interval_s:
            return self._figures
        proc = sum(os.times()[:2])
        system = _system_cpu_times()
        elapsed = now - self._last_mono
        figures: dict[str, float | None] = {"process": round(100.0 * (proc - self._last_proc) / elapsed, 1)}
        if system is not None and self._last_sys is not None and system[1] > self._last_sys[1]:
            busy = system[0] - self._last_sys[0]
            figures["system"] = round(100.0 * busy / (system[1] - self._last_sys[1]), 1)
        else:
            figures["system"] = None
        self._last_mono, self._last_proc, self._last_sys, self._figures = now, proc, system, figures
        return figures

    def _throttling(self) -> int | None:
        now = time.monotonic()
        if now - self._throttled_at >= VCGENCMD_EVERY_S:
            self._throttled_at = now
            self._throttled = read_throttled()
        return self._throttled

    def sample(self) -> dict[str, Any]:
        with self._lock:
            cpu = self._cpu()
            throttled = self._throttling()
        try:
            disk = shutil.disk_usage(self.disk_path)
            disk_free, disk_total = disk.free, disk.total
        except OSError:
            disk_free = disk_total = None  # type: ignore[assignment]  # unknown, reported as null
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        return {
            "cpu_percent": cpu["process"],
            "cpu_percent_system": cpu["system"],
            "cpus": os.cpu_count(),
            "load_1m": round(load, 2) if load is not None else None,
            "cpu_temp_c": cpu_temperature_c(),
            "throttled": f"0x{throttled:x}" if throttled is not None else None,
            "throttled_flags": decode_throttled(throttled) if throttled is not None else None,
            "rss_bytes": rss_bytes(),
            "disk_free_bytes": disk_free,
            "disk_total_bytes": disk_total,
        }
