"""The rows of one ingest transaction: each node's locked state, what the batch did, and the rows
collected so that every table gets one statement per batch (fleet.store.writer uses them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleet import wire
from fleet.store.db import Database
from fleet.wire import Event, Rejected

GNSS_MODES = ("2d", "3d")
GNSS_FRESH_S = 3600.0  # a configured (static) position does not replace a GNSS fix younger than this
CHUNK = 500  # values in one IN (...) list
EVENT_INSERT = (
    "INSERT INTO events (id, node, seq, type, priority, ts, ts_epoch, clock_trusted, historical, label, "
    "thumb_sha256, received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)


@dataclass
class NodeState:
    """A node's row, locked for this transaction; changes are written back once at the end."""

    max_seq: int
    received: int
    duplicates: int
    status_body: str | None
    pos_mode: str | None
    pos_at: float | None
    changes: dict[str, Any] = field(default_factory=dict)

    def set(self, **values: Any) -> None:
        self.changes.update({k: v for k, v in values.items() if v is not None})

    def place(self, location: wire.Location, now: float) -> None:
        gnss = location.mode in GNSS_MODES
        fresh_fix = (
            self.pos_mode in GNSS_MODES and self.pos_at is not None and now - self.pos_at < GNSS_FRESH_S
        )
        if gnss or not fresh_fix:
            self.pos_mode, self.pos_at = location.mode, now
            self.set(lat=location.lat, lon=location.lon, pos_mode=location.mode, pos_at=now)


@dataclass
class Outcome:
    """What one batch did; logged and counted by the ingest after the commit."""

    stored: int = 0
    duplicates: int = 0
    thumbs: int = 0
    records: int = 0  # status, telemetry, replies
    quarantined: Counter[str] = field(default_factory=Counter)
    alarms: list[str] = field(default_factory=list)  # log lines for alarms raised or cleared


class Batch:
    """The rows one transaction will write, collected so each table gets one statement."""

    def __init__(self, db: Database, prefix: str, now: float, out: Outcome) -> None:
        self.db, self.prefix, self.now, self.out = db, prefix, now, out
        self.events: list[tuple[Any, ...]] = []
        self.gaps: list[tuple[Any, ...]] = []
        self.quarantine: dict[str, tuple[Any, ...]] = {}

    def reject(self, topic: str, payload: bytes, rejected: Rejected) -> None:
        key = wire.digest(topic.encode("utf-8", "replace") + b"\0" + payload)
        self.quarantine.setdefault(
            key,
            (
                key,
                self.now,
                clean(topic),
                rejected.node,
                rejected.reason,
                clean(rejected.detail),
                len(payload),
                payload[: wire.QUARANTINE_KEEP],
                rejected.reason,
            ),
        )

    def flush_events(self) -> None:
        if self.events:
            self.db.executemany(EVENT_INSERT, self.events)
            self.events = []
        if self.gaps:
            self.db.executemany(
                "INSERT INTO gaps (node, from_seq, to_seq, opened_at) VALUES (?, ?, ?, ?)", self.gaps
            )
            self.gaps = []

    def flush_quarantine(self) -> None:
        if not self.quarantine:
            return
        known = set(
            lookup(self.db, "SELECT digest FROM quarantine WHERE digest IN ({})", list(self.quarantine))
        )
        fresh = [row for key, row in self.quarantine.items() if (key,) not in known]
        self.db.executemany(
            "INSERT INTO quarantine (digest, received_at, topic, node, reason, detail, size, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
            [row[:8] for row in fresh],
        )
        self.out.quarantined.update(row[8] for row in fresh)


def event_row(event: Event, now: float) -> tuple[Any, ...]:
    trusted = None if event.clock_trusted is None else int(event.clock_trusted)
    return (
        event.id,
        event.node,
        event.seq,
        event.type,
        event.priority,
        event.ts,
        event.ts_epoch,
        trusted,
        int(event.historical),
        event.label,
        event.thumb_sha256,
        now,
        event.text,
    )


def chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def lookup(db: Database, sql: str, values: list[Any]) -> list[tuple[Any, ...]]:
    """`sql` with `IN ({})` filled for `values`, in chunks; all rows."""
    rows: list[tuple[Any, ...]] = []
    for chunk in chunks(list(dict.fromkeys(values))):
        rows += db.all(sql.format(db.marks(len(chunk))), chunk)
    return rows


def text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) else None


def clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; topics and details are shown to people anyway."""
    return text.replace("\x00", "\\0")
