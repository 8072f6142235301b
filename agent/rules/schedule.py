"""Rule schedules: weekly time windows in a local IANA time zone.

Schedules are the only place rules look at wall time; everything else is stream time. A window
that ends before it starts runs past midnight and belongs to the day it starts on, so
"fri 22:00-06:00" is Friday night into Saturday morning.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import datetime

from agent.config.rules import DAYS, TimeWindow


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Schedule:
    """Compiled windows; `active(epoch)` answers in the configured zone (DST handled by zoneinfo)."""

    def __init__(self, windows: Sequence[TimeWindow], timezone: str) -> None:
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.always = not windows
        self._windows = [
            ({DAYS.index(d) for d in w.days}, _minutes(w.start), _minutes(w.end)) for w in windows
        ]

    def active(self, epoch: float) -> bool:
        if self.always:
            return True
        local = datetime.fromtimestamp(epoch, self.tz)
        day, minute = local.weekday(), local.hour * 60 + local.minute
        yesterday = (day - 1) % 7
        for days, start, end in self._windows:
            if start < end:
                if day in days and start <= minute < end:
                    return True
            else:  # past midnight: the evening part today, or the morning part of yesterday's window
                if day in days and minute >= start:
                    return True
                if yesterday in days and minute < end:
                    return True
        return False
