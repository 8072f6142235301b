"""Link measurement and byte budgets: what the uplink achieves, what it may spend, and thumbnails made
smaller when the link or the budget cannot carry them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np


def percentile(values: list[float] | deque[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.fromiter(values, float), q))


class MetaStore(Protocol):
    """Where the meter keeps today's count across restarts (the spool's key-value store)."""

    def put_meta(self, key: str, value: str) -> None: ...

    def get_meta(self, key: str) -> str | None: ...


class LinkMeter:
    """Achieved uplink (bytes acknowledged per second of busy time) and PUBACK round trips.

    Only time with something in flight counts, so an idle link does not look slow and a
    brownout shows up within seconds.
    """

    def __init__(self, window_s: float = 20.0) -> None:
        self.window_s = window_s
        self._acks: deque[tuple[float, int]] = deque()  # (monotonic, bytes) within the window
        self._window_bytes = 0
        self._busy_since: float | None = None
        self._busy: deque[tuple[float, float]] = deque()  # closed busy intervals
        self.rtt_ms: deque[float] = deque(maxlen=512)
        self.acked_bytes = 0
        self.acked_records = 0
        self._lock = threading.Lock()

    def busy(self, inflight: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if inflight and self._busy_since is None:
                self._busy_since = now
            elif not inflight and self._busy_since is not None:
                if self._busy and now - self._busy[-1][1] < 0.01:  # merge back-to-back intervals
                    self._busy[-1] = (self._busy[-1][0], now)
                else:
                    self._busy.append((self._busy_since, now))
                self._busy_since = None

    def acked_all(self, settled: list[tuple[int, float]], now: float | None = None) -> None:
        """PUBACKs that arrived together: (bytes, round trip in seconds) of each."""
        if not settled:
            return
        now = time.monotonic() if now is None else now
        size = sum(s for s, _ in settled)
        with self._lock:
            self._acks.append((now, size))
            self._window_bytes += size
            self.rtt_ms.extend(rtt_s * 1000.0 for _, rtt_s in settled)
            self.acked_bytes += size
            self.acked_records += len(settled)

    def rate_bps(self, now: float | None = None) -> float | None:
        """Bytes per second over the busy part of the last window; None before any measurement."""
        now = time.monotonic() if now is None else now
        start = now - self.window_s
        with self._lock:
            while self._acks and self._acks[0][0] < start:
                self._window_bytes -= self._acks.popleft()[1]
            while self._busy and self._busy[0][1] < start:
                self._busy.popleft()
            if not self._acks:
                return None
            busy = sum(min(end, now) - max(begin, start) for begin, end in self._busy)
            if self._busy_since is not None:
                busy += now - max(self._busy_since, start)
            sent = self._window_bytes
        return sent / max(busy, 0.05)

    def snapshot(self) -> dict[str, float | int | None]:
        rate = self.rate_bps()
        p50 = percentile(self.rtt_ms, 50)
        p95 = percentile(self.rtt_ms, 95)
        return {
            "rate_bps": round(rate, 1) if rate is not None else None,
            "puback_rtt_ms_p50": round(p50, 1) if p50 is not None else None,
            "puback_rtt_ms_p95": round(p95, 1) if p95 is not None else None,
            "acked_bytes": self.acked_bytes,
            "acked_records": self.acked_records,
        }


class ByteBudget:
    """Configured caps: a token bucket for bytes/s and a daily allowance.

    The day is a 24-hour window of spool uptime (monotonic across reboots) that starts again when it
    ends, so a clock jump neither refills nor exhausts it; what was spent is persisted in the spool so
    a restart does not hand out a fresh allowance either.
    """

    SAVE_EVERY_S = 10.0

    def __init__(
        self, per_second: float | None, per_day: int | None, uptime: Callable[[], float], store: MetaStore | None = None
    ) -> None:
        self.per_second = per_second
        self.per_day = per_day
        self._uptime = uptime
        self._store = store  # a Spool (put_meta/get_meta), or None
        self._tokens = per_second * 2 if per_second else 0.0
        self._stamp = time.monotonic()
        self._day_start = uptime()
        self.spent_today = 0
        self._saved_at = 0.0
        if store is not None and (saved := store.get_meta("budget.day")):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                state = json.loads(saved)
                self._day_start, self.spent_today = float(state["start"]), int(state["spent"])

    def _roll_day(self) -> None:
        now = self._uptime()
        if now - self._day_start >= 86400:
            self._day_start = now
            self.spent_today = 0

    def save(self) -> None:
        if self._store is not None:
            self._store.put_meta(
                "budget.day", json.dumps({"start": self._day_start, "spent": self.spent_today})
            )
            self._saved_at = time.monotonic()

    def day_fraction(self) -> float:
        self._roll_day()
        return self.spent_today / self.per_day if self.per_day else 0.0

    def allows(self, size: int, critical: bool, metadata: bool) -> bool:
        """Whether a record of `size` bytes may go now (does not spend)."""
        if self.per_day:
            used = self.day_fraction()
            if used >= 1.0 and not critical:
                return False
            if used >= 0.9 and not (critical or metadata):
                return False
        if self.per_second:
            now = time.monotonic()
            self._tokens = min(
                max(self.per_second * 2, size), self._tokens + (now - self._stamp) * self.per_second
            )
            self._stamp = now
            return self._tokens >= size or critical
        return True

    def spend(self, size: int) -> None:
        self._roll_day()
        self.spent_today += size
        if self.per_second:
            self._tokens -= size
        if self.per_day and time.monotonic() - self._saved_at > self.SAVE_EVERY_S:
            self.save()


DEGRADED_MARK = b"vigil-degraded original-sha256="
SLOW_THUMBNAIL_S = 5.0  # a thumbnail that would occupy the link longer than this goes smaller


class ThumbnailShrinker:
    """Under a slow link, or past half the day's byte budget, a thumbnail goes at half size and lower
    quality instead of waiting for bandwidth it will not get; metadata never shrinks.

    The smaller JPEG carries a comment naming the original's sha256 (the one in its event's
    `thumb.sha256`), so a consumer can tell a degraded thumbnail from a corrupted one over any MQTT
    version; with MQTT 5 it also goes with the user property `vigil-degraded`. Each record is
    shrunk once, however often it is retried."""

    KEPT = 16

    def __init__(self, budget: ByteBudget, per_second: float | None) -> None:
        self.budget = budget
        self.per_second = per_second
        self.degraded = 0
        self._made: dict[int, bytes | None] = {}

    def needed(self, size: int, rate: float | None) -> bool:
        if self.per_second:
            rate = min(rate or self.per_second, self.per_second)
        if self.budget.per_day and self.budget.day_fraction() > 0.5:
            return True
        return rate is not None and size / rate > SLOW_THUMBNAIL_S

    def shrink(self, rowid: int, jpeg: bytes) -> bytes | None:
        """The smaller copy of record `rowid`'s JPEG, or None when it cannot get smaller."""
        if rowid not in self._made:
            smaller = degrade_jpeg(jpeg)
            if smaller is not None:
                smaller = mark_degraded(smaller, hashlib.sha256(jpeg).hexdigest())
                self.degraded += 1
            self._made[rowid] = smaller
            if len(self._made) > self.KEPT:
                del self._made[next(iter(self._made))]
        return self._made[rowid]


def mark_degraded(jpeg: bytes, original_sha256: str) -> bytes:
    """Insert a JPEG comment (COM segment) right after the start-of-image marker."""
    text = DEGRADED_MARK + original_sha256.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def degraded_original(jpeg: bytes) -> str | None:
    """The original's sha256 named by a degraded thumbnail, or None for an original."""
    if jpeg[2:4] != b"\xff\xfe":
        return None
    length = int.from_bytes(jpeg[4:6], "big")
    text = jpeg[6 : 4 + length]
    return text[len(DEGRADED_MARK) :].decode() if text.startswith(DEGRADED_MARK) else None


def degrade_jpeg(jpeg: bytes, *, scale: float = 0.5, quality: int = 50) -> bytes | None:
    """A smaller, lower-quality copy of a thumbnail for a link that cannot carry the original."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(8, int(w * scale)), max(8, int(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok and len(buf) < len(jpeg) else None
