"""The `location` of every event: a fresh GNSS fix, else the configured static position, else null."""

from __future__ import annotations

import time
from typing import Protocol

from agent.events.types import EventContext, Location
from agent.gnss.fix import MODE_3D, Fix


class PositionSource(Protocol):
    def last_position(self) -> Fix | None: ...


class LocationProvider:
    """An EventFactory context provider (`factory.add_context(provider)`)."""

    def __init__(
        self,
        static: tuple[float, float] | None = None,
        gnss: PositionSource | None = None,
        *,
        max_age_s: float = 10.0,
    ) -> None:
        self.static = static
        self.gnss = gnss
        self.max_age_s = max_age_s

    def location(self, now_mono: float | None = None) -> Location | None:
        now = time.monotonic() if now_mono is None else now_mono
        fix = self.gnss.last_position() if self.gnss is not None else None
        if fix is not None and fix.lat is not None and fix.lon is not None:
            age = max(0.0, now - fix.mono)
            if age <= self.max_age_s:
                return {
                    "lat": round(fix.lat, 7),
                    "lon": round(fix.lon, 7),
                    "mode": "3d" if fix.mode == MODE_3D else "2d",
                    "hdop": fix.hdop,
                    "age_s": round(age, 1),
                }
        if self.static is not None:
            lat, lon = self.static
            return {"lat": lat, "lon": lon, "mode": "static", "hdop": None, "age_s": None}
        return None

    def __call__(self) -> EventContext:
        return {"location": self.location()}
