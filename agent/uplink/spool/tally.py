"""One count of everything the spool dropped, per priority class and reason."""

from __future__ import annotations

import threading
from typing import Any

from agent.uplink.spool.records import Priority


class DropTally:
    """Counts and bytes of dropped records per (priority, reason). `pending()` hands out what has
    not been written yet; the spool writes it with its next commit and hands it back on failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[Priority, str], list[int]] = {}
        self._unsaved: list[tuple[int, Priority, int, str]] = []  # (rowid, priority, bytes, reason)

    def add(self, priority: Priority, reason: str, size: int, rowid: int = 0, *, saved: bool = False) -> None:
        with self._lock:
            entry = self._totals.setdefault((priority, reason), [0, 0])
            entry[0] += 1
            entry[1] += size
            if not saved:
                self._unsaved.append((rowid, priority, size, reason))

    def add_totals(self, priority: Priority, reason: str, count: int, size: int) -> None:
        """Counts carried over from elsewhere (an older spool); written with the next STATE snapshot."""
        with self._lock:
            entry = self._totals.setdefault((priority, reason), [0, 0])
            entry[0] += count
            entry[1] += size

    def take_unsaved(self) -> list[tuple[int, Priority, int, str]]:
        with self._lock:
            unsaved, self._unsaved = self._unsaved, []
        return unsaved

    def give_back(self, unsaved: list[tuple[int, Priority, int, str]]) -> None:
        """A commit failed: these go out with the next one."""
        with self._lock:
            self._unsaved[:0] = unsaved

    def has_unsaved(self) -> bool:
        with self._lock:
            return bool(self._unsaved)

    def by_class(self, priority: Priority) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                reason: {"count": count, "bytes": size}
                for (prio, reason), (count, size) in self._totals.items()
                if prio == priority
            }

    def snapshot(self) -> list[list[Any]]:
        """Totals for a STATE entry: [[priority, reason, count, bytes], ...]."""
        with self._lock:
            return [[int(p), r, c, b] for (p, r), (c, b) in sorted(self._totals.items())]

    def restore(self, snapshot: list[list[Any]]) -> None:
        """Replace the totals with a STATE snapshot (drops recorded after it are added on top)."""
        with self._lock:
            self._totals = {(Priority(p), str(r)): [int(c), int(b)] for p, r, c, b in snapshot}
