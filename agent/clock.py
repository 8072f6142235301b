"""Wall-clock trust for a device without an RTC.

A Pi boots with the clock at 1970 or at the last saved time and jumps when NTP (or GNSS) sets it.
Durations and orderings therefore use the monotonic clock; wall time is only a label, and every
label says how far it can be trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

# A wall clock before this is certainly wrong (the software did not exist yet).
PLAUSIBLE_AFTER = datetime(2025, 1, 1, tzinfo=UTC).timestamp()

# Where wall time comes from: ntp/gnss synchronised, system plausible but unconfirmed, unsynced wrong.
ClockSource = Literal["ntp", "gnss", "system", "unsynced"]

_TIME_ERROR = 5  # adjtimex(2) return value: clock not synchronised


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> on 64-bit Linux: we only read the return value and `status`,
    # but the kernel writes the whole struct, so reserve generous room after the known fields.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("_pad", ctypes.c_byte * 4),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


# systemd-timesyncd touches this file at each synchronisation; /run is emptied at boot.
TIMESYNCD_MARKER = Path("/run/systemd/timesync/synchronized")


def _adjtimex_state() -> int | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    return state if state >= 0 else None


def kernel_reports_synchronised(marker: Path = TIMESYNCD_MARKER) -> bool | None:
    """True when the kernel says NTP discipline is active (what `timedatectl` reports); None if unknown.

    Under systemd's ProtectClock=yes (the provisioned unit) adjtimex is refused even for reading
    (EPERM; systemd issue 26413); then systemd-timesyncd's marker, touched at each synchronisation
    since boot, tells."""
    state = _adjtimex_state()
    if state is not None:
        return state != _TIME_ERROR
    try:
        return True if marker.exists() else None
    except OSError:
        return None


def boot_id() -> str:
    """The kernel's boot id, so records can be ordered within one boot even when wall time is wrong.
    With ProcSubset=pid (the provisioned unit) /proc/sys is hidden and systemd passes it in
    $VIGIL_BOOT_ID (%b); only without either is a random one made (then it changes per start)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        pass
    try:
        return str(uuid.UUID(hex=os.environ.get("VIGIL_BOOT_ID", "")))
    except ValueError:
        return str(uuid.uuid4())


@dataclass(frozen=True)
class ClockState:
    source: ClockSource
    trusted: bool

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "trusted": self.trusted}


class Clock:
    """Maps monotonic instants to wall time and says how much that wall time is worth.

    GNSS time, when a receiver reports a fix, marks the clock trusted even without NTP; the
    offset between GNSS UTC and the system clock is kept so labels can be corrected.
    """

    GNSS_VALID_S = 600.0

    def __init__(self, *, ntp_probe: Callable[[], bool | None] = kernel_reports_synchronised) -> None:
        self._ntp_probe = ntp_probe
        self._lock = threading.Lock()
        self._gnss_offset: float | None = None  # gnss_utc - system wall, seconds
        self._gnss_mono: float | None = None
        self._ntp_cache: tuple[float, bool | None] = (-1e9, None)
        self.boot_id = boot_id()

    def note_gnss_time(self, gnss_utc: float, at_mono: float | None = None) -> None:
        """Record a GNSS UTC reading taken at monotonic instant `at_mono`."""
        at_mono = time.monotonic() if at_mono is None else at_mono
        wall_then = time.time() - (time.monotonic() - at_mono)
        with self._lock:
            self._gnss_offset = gnss_utc - wall_then
            self._gnss_mono = at_mono

    def _ntp(self) -> bool | None:
        now = time.monotonic()
        checked_at, value = self._ntp_cache
        if now - checked_at > 30.0:
            value = self._ntp_probe()
            self._ntp_cache = (now, value)
        return value

    def state(self) -> ClockState:
        if self._ntp():
            return ClockState("ntp", True)
        with self._lock:
            gnss_fresh = (
                self._gnss_mono is not None and time.monotonic() - self._gnss_mono < self.GNSS_VALID_S
            )
            offset = self._gnss_offset
        if gnss_fresh and offset is not None:
            return ClockState("gnss", True)
        if time.time() >= PLAUSIBLE_AFTER:
            return ClockState("system", False)
        return ClockState("unsynced", False)

    def trusted_now(self) -> float | None:
        """The current time (epoch seconds) when the clock is trusted, else None. Trusted by GNSS
        alone, the system clock may be far off (a Pi without NTP boots in 1970 or at its last saved
        time): the GNSS time is used then, not the system clock."""
        state = self.state()
        if not state.trusted:
            return None
        now = time.time()
        with self._lock:
            offset = self._gnss_offset
        if state.source == "gnss" and offset is not None:
            now += offset
        return now

    def wall_at(self, mono: float) -> float:
        """Best wall-clock estimate (epoch seconds) for a monotonic instant."""
        wall = time.time() - (time.monotonic() - mono)
        state = self.state()
        if state.source == "gnss" and self._gnss_offset is not None:
            wall += self._gnss_offset
        return wall


def rfc3339(epoch: float) -> str:
    """UTC RFC 3339 with milliseconds, e.g. 2026-11-27T09:10:11.123Z."""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
