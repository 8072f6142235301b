"""How much the spool may hold, what it gives up first, and when records are too old. Pure functions
over the live index, so each rule is testable on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.uplink.spool.codec import FRAME_OVERHEAD
from agent.uplink.spool.index import Live, LiveIndex
from agent.uplink.spool.records import EVICTION_ORDER, Priority

RECORD_OVERHEAD = FRAME_OVERHEAD + 30 + 2 + 36 + 2 + 2  # fixed fields, id and lengths (+ stream, topic)


@dataclass(frozen=True)
class SpoolLimits:
    """Bounds of the spool. `budget_bytes` covers every file of the spool on disk."""

    budget_bytes: int = 256 * 1024 * 1024
    free_floor_bytes: int = 64 * 1024 * 1024
    ttl_s: dict[Priority, float] = field(default_factory=lambda: {p: 7 * 86400.0 for p in Priority})
    commit_interval_s: float = 0.2
    max_pending_bytes: int = 16 * 1024 * 1024
    max_record_bytes: int = 4 * 1024 * 1024

    @property
    def segment_bytes(self) -> int:
        """Segment size: small enough that a retired segment gives back space soon, large enough that
        rotations (a STATE snapshot and a directory sync each) are rare."""
        return max(64 * 1024, min(8 * 1024 * 1024, self.budget_bytes // 32))


def disk_cost(payload: int, topic: int = 40, stream: int = 8) -> int:
    """Bytes a record of `payload` bytes takes on disk (its entry; segments are packed)."""
    return payload + RECORD_OVERHEAD + topic + stream


def allowed_live_bytes(limits: SpoolLimits, *, live: int, fs_room: int | None) -> int:
    """Bytes of waiting records the spool may keep. A fifth of the budget and a segment stay free for
    what is not reclaimed yet (delivered records in segments still in use) and for compaction; the
    free-space floor of the filesystem is never eaten into."""
    allowed = int(limits.budget_bytes * 0.8) - 2 * limits.segment_bytes
    if fs_room is not None:
        allowed = min(allowed, live + fs_room - limits.segment_bytes)
    return max(0, allowed)


def eviction_victims(
    index: LiveIndex, excess: int, *, dead: set[int] | frozenset[int] = frozenset(), new: Sequence[Live] = ()
) -> list[Live]:
    """The oldest records of the least important classes first, until `excess` bytes are freed.
    `new` records (not indexed yet) count too, after the indexed ones of their class: a new thumbnail
    never displaces a critical record. Records in `dead` are leaving anyway."""
    victims: list[Live] = []
    by_priority: dict[Priority, list[Live]] = {}
    for live in new:
        by_priority.setdefault(live.priority, []).append(live)
    for priority in EVICTION_ORDER:
        for live in [*index.oldest(priority, dead), *by_priority.get(priority, [])]:
            if excess <= 0:
                return victims
            victims.append(live)
            excess -= live.length
    return victims


def expired(
    index: LiveIndex, limits: SpoolLimits, *, now_uptime: float, now_wall: float, trusted_now: bool
) -> list[Live]:
    """Records past their class's TTL. Age is spool uptime, raised to the wall-clock age only when the
    wall clock was trusted both when the record was accepted and now (a clock jumping from 1970 to
    today neither expires everything nor keeps records forever)."""
    found: list[Live] = []
    for priority, ttl in limits.ttl_s.items():
        for live in index.oldest(priority):
            age = now_uptime - live.accepted_uptime
            if trusted_now and live.trusted:
                age = max(age, now_wall - live.accepted_wall)
            if age > ttl:
                found.append(live)
    return found


def compaction_due(
    *, oldest_size: int, oldest_live: int, disk: int, segments: int, limits: SpoolLimits
) -> bool:
    """Whether to copy the oldest segment's few waiting records forward so the segment can go: only
    when it is mostly delivered already, and space or the number of segments says it is worth it."""
    if oldest_live * 2 >= oldest_size:
        return False
    return disk > limits.budget_bytes // 2 or segments > 8
