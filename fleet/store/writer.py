"""Stores a batch of parsed messages in one transaction: idempotent by event id, seq gaps per node,
thumbnails checked against their event, everything refused kept in quarantine.

The caller acknowledges the batch to the broker only after `apply` returned (committed), so a crash
anywhere before that gets the whole batch delivered again, and every write here is safe to repeat:
events are keyed by id, history rows and quarantine by payload digest, seq accounting moves only
for an id stored for the first time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import wire
from fleet.store.db import Database
from fleet.wire import Event, Incoming, Parsed, Rejected, Reply, Status, Telemetry, Thumb

Statement = tuple[str, Sequence[Any]]
GNSS_MODES = ("2d", "3d")
GNSS_FRESH_S = 3600.0  # a configured (static) position does not replace a GNSS fix younger than this


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


class BatchWriter:
    def __init__(self, db: Database, prefix: str) -> None:
        self.db = db
        self.prefix = prefix.strip("/")

    def apply(
        self,
        items: Sequence[tuple[Incoming, Parsed]],
        now: float | None = None,
        *,
        also: Sequence[Statement] = (),
    ) -> Outcome:
        """Store `items` in one transaction (plus the `also` statements, e.g. removing replayed quarantine)."""
        now = time.time() if now is None else now
        out = Outcome()
        with self.db.tx():
            for sql, params in also:
                self.db.execute(sql, params)
            nodes = self._lock_nodes(sorted({p.node for _, p in items if not isinstance(p, Rejected)}), now)
            for incoming, parsed in items:
                if isinstance(parsed, Rejected):
                    self._quarantine(incoming.topic, incoming.payload, parsed, now, out)
                    continue
                state = nodes[parsed.node]
                if not incoming.retain:
                    state.set(last_seen=now)
                if isinstance(parsed, Event):
                    self._event(parsed, state, now, out)
                elif isinstance(parsed, Thumb):
                    self._thumb(parsed, incoming, now, out)
                elif isinstance(parsed, Status):
                    self._status(parsed, state, now, out)
                elif isinstance(parsed, Telemetry):
                    self._telemetry(parsed, state, now, out)
                elif isinstance(parsed, Reply):
                    self._reply(parsed, now, out)
            for node, state in nodes.items():
                self._write_back(node, state)
        return out

    # -- nodes ---------------------------------------------------------------------------------------
    def _lock_nodes(self, names: list[str], now: float) -> dict[str, NodeState]:
        if not names:
            return {}
        for name in names:  # in name order: two ingest processes never wait on each other in a cycle
            self.db.execute(
                "INSERT INTO nodes (node, first_seen) VALUES (?, ?) ON CONFLICT (node) DO NOTHING",
                (name, now),
            )
        lock = " FOR UPDATE" if self.db.kind == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE holds the file
        rows = self.db.all(
            "SELECT node, max_seq, received, duplicates, status_body, pos_mode, pos_at FROM nodes "
            f"WHERE node IN ({self.db.marks(len(names))}) ORDER BY node{lock}",
            names,
        )
        return {r[0]: NodeState(int(r[1]), int(r[2]), int(r[3]), r[4], r[5], r[6]) for r in rows}

    def _write_back(self, node: str, state: NodeState) -> None:
        values = {"max_seq": state.max_seq, "received": state.received, "duplicates": state.duplicates}
        values.update(state.changes)
        columns = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE nodes SET {columns} WHERE node = ?", [*values.values(), node])

    # -- events --------------------------------------------------------------------------------------
    def _event(self, event: Event, state: NodeState, now: float, out: Outcome) -> None:
        same_seq = [
            r[0]
            for r in self.db.all("SELECT id FROM events WHERE node = ? AND seq = ?", (event.node, event.seq))
        ]
        if event.id in same_seq:
            state.duplicates += 1
            out.duplicates += 1
            return
        inserted = self.db.execute(
            "INSERT INTO events (id, node, seq, type, priority, ts, ts_epoch, clock_trusted, historical, label, "
            "thumb_sha256, received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (
                event.id,
                event.node,
                event.seq,
                event.type,
                event.priority,
                event.ts,
                event.ts_epoch,
                None if event.clock_trusted is None else int(event.clock_trusted),
                int(event.historical),
                event.label,
                event.thumb_sha256,
                now,
                event.text,
            ),
        ).rowcount
        if inserted == 0:
            where = self.db.one("SELECT node, seq FROM events WHERE id = ?", (event.id,))
            detail = f"id {event.id} is already stored as {where[0]} seq {where[1]}" if where else event.id
            topic = f"{self.prefix}/{event.node}/events"
            rejected = Rejected(wire.ID_CONFLICT, detail, event.node)
            self._quarantine(topic, event.text.encode(), rejected, now, out)
            return
        out.stored += 1
        state.set(last_event_at=now, model=event.agent_model)
        if event.location is not None:
            state.place(event.location, now)
        if same_seq:
            self._alarm(event.node, "seq_reuse", {"seq": event.seq, "ids": [*same_seq, event.id]}, now, out)
            out.alarms.append(
                f"{event.node}: seq {event.seq} reused by event {event.id} (also {', '.join(same_seq)})"
            )
        else:
            self._account(event.node, event.seq, state, now, out)
        self._match_pending_thumb(event, now, out)

    def _account(self, node: str, seq: int, state: NodeState, now: float, out: Outcome) -> None:
        """A seq seen for the first time: open a gap below it, or close the gap it fills."""
        state.received += 1
        if seq > state.max_seq:
            if seq > state.max_seq + 1:
                self.db.execute(
                    "INSERT INTO gaps (node, from_seq, to_seq, opened_at) VALUES (?, ?, ?, ?)",
                    (node, state.max_seq + 1, seq - 1, now),
                )
            state.max_seq = seq
            return
        gap = self.db.one(
            "SELECT from_seq, to_seq, opened_at, alarm_id FROM gaps WHERE node = ? AND from_seq <= ? "
            "ORDER BY from_seq DESC LIMIT 1",
            (node, seq),
        )
        if gap is None or gap[1] < seq:
            return  # below the high-water mark and in no gap: the gap was written off
        low, high, opened_at, alarm_id = gap
        self.db.execute("DELETE FROM gaps WHERE node = ? AND from_seq = ?", (node, low))
        for piece_low, piece_high in ((low, seq - 1), (seq + 1, high)):
            if piece_low <= piece_high:
                self.db.execute(
                    "INSERT INTO gaps (node, from_seq, to_seq, opened_at, alarm_id) VALUES (?, ?, ?, ?, ?)",
                    (node, piece_low, piece_high, opened_at, alarm_id),
                )
        if alarm_id is not None and not self.db.one(
            "SELECT 1 FROM gaps WHERE alarm_id = ? LIMIT 1", (alarm_id,)
        ):
            self.db.execute("UPDATE alarms SET cleared_at = ? WHERE id = ?", (now, alarm_id))
            out.alarms.append(
                f"{node}: every event of an alarmed gap arrived late (alarm {alarm_id} cleared)"
            )

    # -- thumbnails ----------------------------------------------------------------------------------
    def _thumb(self, thumb: Thumb, incoming: Incoming, now: float, out: Outcome) -> None:
        event = self.db.one("SELECT node, thumb_sha256 FROM events WHERE id = ?", (thumb.event_id,))
        if event is None:
            self._store_thumb(thumb, "pending", now)
            return
        node, expected = event
        if node != thumb.node:
            rejected = Rejected(
                wire.NODE_MISMATCH, f"thumbnail of {node}'s event {thumb.event_id}", thumb.node
            )
            self._quarantine(incoming.topic, incoming.payload, rejected, now, out)
        elif expected is None:
            rejected = Rejected(wire.THUMB_UNEXPECTED, f"event {thumb.event_id} has no thumbnail", thumb.node)
            self._quarantine(incoming.topic, incoming.payload, rejected, now, out)
        elif expected == thumb.sha256:
            out.thumbs += self._store_thumb(thumb, "ok", now)
        elif thumb.degraded:
            out.thumbs += self._store_thumb(thumb, "degraded", now)
        else:
            detail = f"sha256 {thumb.sha256} but event {thumb.event_id} names {expected}"
            self._quarantine(
                incoming.topic, incoming.payload, Rejected(wire.THUMB_MISMATCH, detail, thumb.node), now, out
            )

    def _store_thumb(self, thumb: Thumb, state: str, now: float) -> int:
        """Insert, or put the original in place of a degraded copy stored earlier; 1 when stored."""
        current = self.db.one("SELECT state FROM thumbs WHERE event_id = ?", (thumb.event_id,))
        if current is not None and not (current[0] == "degraded" and state == "ok"):
            return 0  # a re-delivery
        self.db.execute("DELETE FROM thumbs WHERE event_id = ?", (thumb.event_id,))
        self.db.execute(
            "INSERT INTO thumbs (event_id, node, state, degraded, sha256, bytes, jpeg, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                thumb.event_id,
                thumb.node,
                state,
                int(thumb.degraded),
                thumb.sha256,
                len(thumb.jpeg),
                thumb.jpeg,
                now,
            ),
        )
        return 1

    def _match_pending_thumb(self, event: Event, now: float, out: Outcome) -> None:
        """A thumbnail that arrived before its event is checked now."""
        pending = self.db.one(
            "SELECT node, sha256, degraded, jpeg FROM thumbs WHERE event_id = ? AND state = 'pending'",
            (event.id,),
        )
        if pending is None:
            return
        node, sha256, degraded, jpeg = pending
        reason = None
        if node != event.node:
            reason, detail = (
                wire.NODE_MISMATCH,
                f"thumbnail on {node}'s topic for {event.node}'s event {event.id}",
            )
        elif event.thumb_sha256 is None:
            reason, detail = wire.THUMB_UNEXPECTED, f"event {event.id} has no thumbnail"
        elif sha256 != event.thumb_sha256 and not degraded:
            reason, detail = (
                wire.THUMB_MISMATCH,
                f"sha256 {sha256} but event {event.id} names {event.thumb_sha256}",
            )
        if reason is not None:
            self.db.execute("DELETE FROM thumbs WHERE event_id = ?", (event.id,))
            topic = f"{self.prefix}/{node}/thumbs/{event.id}"
            self._quarantine(topic, bytes(jpeg), Rejected(reason, detail, node), now, out)
            return
        state = "ok" if sha256 == event.thumb_sha256 else "degraded"
        self.db.execute("UPDATE thumbs SET state = ? WHERE event_id = ?", (state, event.id))
        out.thumbs += 1

    # -- status, telemetry, replies ------------------------------------------------------------------
    def _status(self, status: Status, state: NodeState, now: float, out: Outcome) -> None:
        if status.retained and status.text == state.status_body:
            return  # the broker replays the retained status on every subscription: not news
        self.db.execute(
            "INSERT INTO status_history (node, received_at, state, body) VALUES (?, ?, ?, ?)",
            (status.node, now, status.state, status.text),
        )
        state.status_body = status.text
        body = status.body
        state.set(
            status_state=status.state,
            status_at=now,
            status_body=status.text,
            agent_version=_text(body.get("agent")),
            model=_text(body.get("model")),
        )
        out.records += 1

    def _telemetry(self, telemetry: Telemetry, state: NodeState, now: float, out: Outcome) -> None:
        inserted = self.db.execute(
            "INSERT INTO telemetry (node, digest, received_at, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (node, digest) DO NOTHING",
            (telemetry.node, telemetry.digest, now, telemetry.text),
        ).rowcount
        if not inserted:
            out.duplicates += 1
            return
        body = telemetry.body
        found = body.get("versions")
        versions: dict[str, Any] = found if isinstance(found, dict) else {}
        state.set(
            telemetry_at=now,
            telemetry_body=telemetry.text,
            agent_version=_text(versions.get("agent")),
            model=_text(versions.get("model")),
        )
        gnss = body.get("gnss")
        if isinstance(gnss, dict) and gnss.get("mode") in GNSS_MODES:
            location = wire.location_of(
                {"lat": gnss.get("lat"), "lon": gnss.get("lon"), "mode": gnss.get("mode")}
            )
            if location is not None:
                state.place(location, now)
        out.records += 1

    def _reply(self, reply: Reply, now: float, out: Outcome) -> None:
        inserted = self.db.execute(
            "INSERT INTO replies (node, digest, request_id, command, status, received_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, digest) DO NOTHING",
            (reply.node, reply.digest, reply.request_id, reply.command, reply.status, now, reply.text),
        ).rowcount
        out.records += inserted

    # -- quarantine and alarms -----------------------------------------------------------------------
    def _quarantine(self, topic: str, payload: bytes, rejected: Rejected, now: float, out: Outcome) -> None:
        key = wire.digest(topic.encode("utf-8", "replace") + b"\0" + payload)
        inserted = self.db.execute(
            "INSERT INTO quarantine (digest, received_at, topic, node, reason, detail, size, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
            (
                key,
                now,
                _clean(topic),
                rejected.node,
                rejected.reason,
                _clean(rejected.detail),
                len(payload),
                payload[: wire.QUARANTINE_KEEP],
            ),
        ).rowcount
        if inserted:
            out.quarantined[rejected.reason] += 1

    def _alarm(self, node: str | None, kind: str, detail: dict[str, Any], now: float, out: Outcome) -> int:
        row = self.db.one(
            "INSERT INTO alarms (node, kind, detail, opened_at) VALUES (?, ?, ?, ?) RETURNING id",
            (node, kind, json.dumps(detail, separators=(",", ":")), now),
        )
        assert row is not None
        return int(row[0])

    def sweep_gaps(self, alarm_after_s: float, now: float | None = None) -> list[str]:
        """Raise an alarm for every gap open longer than `alarm_after_s`; the log lines to write."""
        now = time.time() if now is None else now
        skip = " FOR UPDATE SKIP LOCKED" if self.db.kind == "postgresql" else ""
        lines: list[str] = []
        with self.db.tx():
            rows = self.db.all(
                "SELECT node, from_seq, to_seq, opened_at FROM gaps WHERE alarm_id IS NULL AND opened_at <= ? "
                f"ORDER BY opened_at LIMIT 1000{skip}",
                (now - alarm_after_s,),
            )
            for node, low, high, opened_at in rows:
                detail = {"from": low, "to": high, "missing": high - low + 1, "opened_at": opened_at}
                alarm_id = self._alarm(node, "gap", detail, now, Outcome())
                self.db.execute(
                    "UPDATE gaps SET alarm_id = ? WHERE node = ? AND from_seq = ?", (alarm_id, node, low)
                )
                lines.append(
                    f"{node}: events seq {low}..{high} ({high - low + 1}) missing for {now - opened_at:.0f} s "
                    f"(alarm {alarm_id})"
                )
        return lines


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) else None


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; topics and details are shown to people anyway."""
    return text.replace("\x00", "\\0")
