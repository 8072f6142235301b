"""Records waiting to leave, kept in memory: where each lives on disk, and the order they go in.

The publisher asks for the next records many times a second; answering from memory (per priority,
in commit order) costs no disk reads and no SQL. About 100 bytes per waiting record.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from agent.uplink.spool.records import Priority


@dataclass(slots=True)
class Live:
    """A committed record that has not left yet: its disk location and what the policies need."""

    rowid: int
    priority: Priority
    accepted_uptime: float
    accepted_wall: float
    trusted: bool
    segment: int
    offset: int
    length: int  # of its entry on disk (what it costs)
    size: int  # of its payload (what it costs the link)


class LiveIndex:
    """Waiting records per priority in rowid (commit) order, with per-class and per-segment sums."""

    def __init__(self) -> None:
        self.entries: dict[int, Live] = {}
        self._order: dict[Priority, list[int]] = {p: [] for p in Priority}
        self._head: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.count: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.bytes: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.segment_bytes: dict[int, int] = {}  # live entry bytes per segment

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, rowid: int) -> bool:
        return rowid in self.entries

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def add(self, live: Live) -> None:
        """Index a record; a record moved to another segment (compaction) keeps its place in line."""
        old = self.entries.get(live.rowid)
        if old is not None:
            self._unaccount(old)
        else:
            order = self._order[live.priority]
            if order and order[-1] > live.rowid:  # salvaged out of order: keep the list sorted
                bisect.insort(order, live.rowid, lo=self._head[live.priority])
            else:
                order.append(live.rowid)
        self.entries[live.rowid] = live
        self.count[live.priority] += 1
        self.bytes[live.priority] += live.length
        self.segment_bytes[live.segment] = self.segment_bytes.get(live.segment, 0) + live.length

    def remove(self, rowid: int) -> Live | None:
        live = self.entries.pop(rowid, None)
        if live is None:
            return None
        self._unaccount(live)
        priority = live.priority
        order = self._order[priority]
        head = self._head[priority]
        while head < len(order) and order[head] not in self.entries:
            head += 1
        self._head[priority] = head
        stale = len(order) - head - self.count[priority]  # removed from the middle, still listed
        if (head > 4096 and head * 2 > len(order)) or (stale > 1024 and stale > self.count[priority]):
            self._order[priority] = [r for r in order[head:] if r in self.entries]
            self._head[priority] = 0
        return live

    def _unaccount(self, live: Live) -> None:
        self.count[live.priority] -= 1
        self.bytes[live.priority] -= live.length
        left = self.segment_bytes[live.segment] - live.length
        if left:
            self.segment_bytes[live.segment] = left
        else:
            del self.segment_bytes[live.segment]

    def oldest(self, priority: Priority, skip: set[int] | frozenset[int] = frozenset()) -> Iterator[Live]:
        """Waiting records of one class, oldest first."""
        return self._from(priority, self._head[priority], None, skip)

    def _from(
        self, priority: Priority, start: int, below: int | None, skip: set[int] | frozenset[int]
    ) -> Iterator[Live]:
        order = self._order[priority]
        entries = self.entries
        for index in range(start, len(order)):
            rowid = order[index]
            if below is not None and rowid >= below:
                return
            live = entries.get(rowid)
            if live is not None and rowid not in skip and live.priority == priority:
                yield live

    def select(
        self,
        limit: int,
        *,
        skip: set[int] | frozenset[int] = frozenset(),
        boundary: int | None = None,
        backlog_share: float = 0.25,
        max_priority: Priority = Priority.TELEMETRY,
    ) -> list[Live]:
        """Up to `limit` records to send next, highest priority first. Within a class, records from
        `boundary` (a rowid) on are live and go first, but every 1/backlog_share-th pick comes from
        the backlog so it keeps draining."""
        chosen: list[Live] = []
        every = max(1, round(1 / backlog_share)) if backlog_share > 0 else 0
        for priority in Priority:
            if priority > max_priority or len(chosen) >= limit:
                break
            if not self.count[priority]:
                continue
            need = limit - len(chosen)
            head = self._head[priority]
            if boundary is None:
                chosen += _take(self._from(priority, head, None, skip), need)
                continue
            split = bisect.bisect_left(self._order[priority], boundary, lo=head)
            live = _take(self._from(priority, split, None, skip), need)
            back = _take(self._from(priority, head, boundary, skip), need)
            picked = li = bi = 0
            while (li < len(live) or bi < len(back)) and len(chosen) < limit:
                picked += 1
                from_backlog = li >= len(live) or (bi < len(back) and every and picked % every == 0)
                if from_backlog:
                    chosen.append(back[bi])
                    bi += 1
                else:
                    chosen.append(live[li])
                    li += 1
        return chosen


def _take(it: Iterator[Live], n: int) -> list[Live]:
    out: list[Live] = []
    for live in it:
        out.append(live)
        if len(out) >= n:
            break
    return out
