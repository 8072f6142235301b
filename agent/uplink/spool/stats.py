"""One description of a spool's contents, for the live spool (status page, telemetry) and for a
spool file read by `agent spool stats`; built from the in-memory index, never by scanning records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.uplink.spool.index import LiveIndex
from agent.uplink.spool.records import Priority
from agent.uplink.spool.tally import DropTally


def describe(
    *,
    path: Path,
    index: LiveIndex,
    tally: DropTally,
    seq: dict[str, int],
    uptime: float,
    disk_bytes: int,
    budget_bytes: int | None,
    recovered_from: Path | None = None,
    set_aside: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    classes: dict[str, Any] = {}
    for priority in Priority:
        oldest = next(index.oldest(priority), None)
        classes[priority.label] = {
            "depth": index.count[priority],
            "bytes": index.bytes[priority],
            "oldest_age_s": round(max(0.0, uptime - oldest.accepted_uptime), 1) if oldest else None,
            "oldest_accepted_wall": oldest.accepted_wall if oldest else None,
            "drops": tally.by_class(priority),
        }
    return {
        "path": str(path),
        "depth": len(index),
        "bytes": index.total_bytes,
        "disk_bytes": disk_bytes,
        "budget_bytes": budget_bytes,
        "classes": classes,
        "seq": dict(seq),
        "uptime_s": round(uptime, 1),
        "recovered_from": str(recovered_from) if recovered_from else None,
        "set_aside": set_aside or [],
    }


def set_aside_files(directory: Path) -> list[dict[str, Any]]:
    """Damaged segments (and damaged older spool databases) moved aside: kept, never deleted."""
    found = []
    for path in sorted([*directory.glob("*.corrupt-*"), *directory.parent.glob("spool.db.corrupt-*")]):
        if path.name.endswith(("-wal", "-shm")):
            continue
        try:
            found.append({"name": path.name, "bytes": path.stat().st_size})
        except OSError:
            continue
    return found
