"""Stores a batch of parsed messages in one transaction: idempotent by event id, seq gaps per node,
thumbnails checked against their event, everything refused kept in quarantine.

The caller acknowledges the batch to the broker only after `apply` returned (committed), so a crash
anywhere before that gets the whole batch delivered again, and every write here is safe to repeat:
events are keyed by id, history rows and quarantine by payload digest, seq accounting moves only
for an id stored for the first time.

A batch costs a fixed number of statements, not a few per message (a round trip each, on
PostgreSQL): the nodes are locked, the ids and thumbnails looked up, and the rows written, with one
statement each (bench/ingest.py). Only an event below its node's high-water mark (late, or a reused
seq) is looked at on its own, which is rare in a steady stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from fleet import wire
from fleet.store import auditheads
from fleet.store.db import Database
from fleet.store.rows import (
    GNSS_MODES,
    Batch,
    NodeState,
    Outcome,
    chunks,
    event_row,
    lookup,
    text,
)
from fleet.wire import Event, Incoming, Parsed, Rejected, Reply, Status, Telemetry, Thumb

Statement = tuple[str, Sequence[Any]]
NODE_COLUMNS = (
    "last_seen",
    "last_event_at",
    "status_state",
    "status_at",
    "status_body",
    "telemetry_at",
    "telemetry_body",
    "agent_version",
    "model",
    "lat",
    "lon",
    "pos_mode",
    "pos_at",
)
THUMB_INSERT = (
    "INSERT INTO thumbs (event_id, node, state, degraded, sha256, bytes, jpeg, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


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
            batch = Batch(self.db, self.prefix, now, out)
            nodes = self._lock_nodes(sorted({p.node for _, p in items if not isinstance(p, Rejected)}), now)
            for incoming, parsed in items:
                if isinstance(parsed, Rejected):
                    batch.reject(incoming.topic, incoming.payload, parsed)
                elif not incoming.retain:
                    nodes[parsed.node].set(last_seen=now)
            # events first: a thumbnail and its event in one batch always find each other
            self._events([(i, p) for i, p in items if isinstance(p, Event)], nodes, batch)
            self._thumbs([(i, p) for i, p in items if isinstance(p, Thumb)], batch)
            self._statuses([p for _, p in items if isinstance(p, Status)], nodes, batch)
            self._telemetry([p for _, p in items if isinstance(p, Telemetry)], nodes, batch)
            self._replies([p for _, p in items if isinstance(p, Reply)], batch)
            batch.flush_quarantine()
            self._write_back(nodes)
        return out

    # -- nodes ---------------------------------------------------------------------------------------
    def _lock_nodes(self, names: list[str], now: float) -> dict[str, NodeState]:
        if not names:
            return {}
        # in name order: two ingest processes never wait on each other in a cycle
        self.db.executemany(
            "INSERT INTO nodes (node, first_seen) VALUES (?, ?) ON CONFLICT (node) DO NOTHING",
            [(name, now) for name in names],
        )
        lock = " FOR UPDATE" if self.db.kind == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE holds the file
        states: dict[str, NodeState] = {}
        for chunk in chunks(names):
            rows = self.db.all(
                "SELECT node, max_seq, received, duplicates, status_body, pos_mode, pos_at FROM nodes "
                f"WHERE node IN ({self.db.marks(len(chunk))}) ORDER BY node{lock}",
                chunk,
            )
            states.update({r[0]: NodeState(int(r[1]), int(r[2]), int(r[3]), r[4], r[5], r[6]) for r in rows})
        return states

    def _write_back(self, nodes: dict[str, NodeState]) -> None:
        if not nodes:
            return
        assignments = ", ".join(f"{c} = COALESCE(?, {c})" for c in NODE_COLUMNS)
        self.db.executemany(
            f"UPDATE nodes SET max_seq = ?, received = ?, duplicates = ?, {assignments} WHERE node = ?",
            [
                (s.max_seq, s.received, s.duplicates, *(s.changes.get(c) for c in NODE_COLUMNS), node)
                for node, s in nodes.items()
            ],
        )

    # -- events --------------------------------------------------------------------------------------
    def _events(self, items: list[tuple[Incoming, Event]], nodes: dict[str, NodeState], batch: Batch) -> None:
        if not items:
            return
        known = {
            r[0]: (r[1], int(r[2]))
            for r in lookup(
                self.db, "SELECT id, node, seq FROM events WHERE id IN ({})", [e.id for _, e in items]
            )
        }
        fresh: list[Event] = []
        for incoming, event in items:
            state = nodes[event.node]
            stored_as = known.get(event.id)
            if stored_as == (event.node, event.seq):
                state.duplicates += 1
                batch.out.duplicates += 1
                continue
            if stored_as is not None:
                detail = f"id {event.id} is already stored as {stored_as[0]} seq {stored_as[1]}"
                batch.reject(incoming.topic, incoming.payload, Rejected(wire.ID_CONFLICT, detail, event.node))
                continue
            if event.seq > state.max_seq:  # the usual case: the newest event of its node
                if event.seq > state.max_seq + 1:
                    batch.gaps.append((event.node, state.max_seq + 1, event.seq - 1, batch.now))
                state.max_seq = event.seq
                state.received += 1
            else:
                batch.flush_events()  # what this batch wrote so far is part of the answer
                self._late_or_reused(event, state, batch)
            known[event.id] = (event.node, event.seq)
            batch.events.append(event_row(event, batch.now))
            fresh.append(event)
            batch.out.stored += 1
            state.set(last_event_at=batch.now, model=event.agent_model)
            if event.location is not None:
                state.place(event.location, batch.now)
        batch.flush_events()
        self._match_pending_thumbs(fresh, batch)

    def _late_or_reused(self, event: Event, state: NodeState, batch: Batch) -> None:
        """An event at or below its node's high-water mark: it fills a gap, or reuses a seq (an alarm)."""
        same_seq = [
            r[0]
            for r in self.db.all("SELECT id FROM events WHERE node = ? AND seq = ?", (event.node, event.seq))
        ]
        if same_seq:
            ids = [*same_seq, event.id]
            self._alarm(event.node, "seq_reuse", {"seq": event.seq, "ids": ids}, batch.now)
            batch.out.alarms.append(
                f"{event.node}: seq {event.seq} reused by event {event.id} (also {', '.join(same_seq)})"
            )
            return
        state.received += 1
        gap = self.db.one(
            "SELECT from_seq, to_seq, opened_at, alarm_id FROM gaps WHERE node = ? AND from_seq <= ? "
            "ORDER BY from_seq DESC LIMIT 1",
            (event.node, event.seq),
        )
        if gap is None or gap[1] < event.seq:
            return  # below the high-water mark and in no gap: the gap was written off
        low, high, opened_at, alarm_id = gap
        self.db.execute("DELETE FROM gaps WHERE node = ? AND from_seq = ?", (event.node, low))
        for piece_low, piece_high in ((low, event.seq - 1), (event.seq + 1, high)):
            if piece_low <= piece_high:
                self.db.execute(
                    "INSERT INTO gaps (node, from_seq, to_seq, opened_at, alarm_id) VALUES (?, ?, ?, ?, ?)",
                    (event.node, piece_low, piece_high, opened_at, alarm_id),
                )
        if alarm_id is not None and not self.db.one(
            "SELECT 1 FROM gaps WHERE alarm_id = ? LIMIT 1", (alarm_id,)
        ):
            self.db.execute("UPDATE alarms SET cleared_at = ? WHERE id = ?", (batch.now, alarm_id))
            batch.out.alarms.append(
                f"{event.node}: every event of an alarmed gap arrived late (alarm {alarm_id} cleared)"
            )

    # -- thumbnails ----------------------------------------------------------------------------------
    def _thumbs(self, items: list[tuple[Incoming, Thumb]], batch: Batch) -> None:
        if not items:
            return
        ids = [t.event_id for _, t in items]
        events = {
            r[0]: (r[1], r[2])
            for r in lookup(self.db, "SELECT id, node, thumb_sha256 FROM events WHERE id IN ({})", ids)
        }
        current = {
            r[0]: r[1]
            for r in lookup(self.db, "SELECT event_id, state FROM thumbs WHERE event_id IN ({})", ids)
        }
        rows: list[tuple[Any, ...]] = []
        for incoming, thumb in items:
            event = events.get(thumb.event_id)
            if event is None:
                state = "pending"  # checked when its event arrives
            elif event[0] != thumb.node:
                detail = f"thumbnail of {event[0]}'s event {thumb.event_id}"
                batch.reject(
                    incoming.topic, incoming.payload, Rejected(wire.NODE_MISMATCH, detail, thumb.node)
                )
                continue
            elif event[1] is None:
                detail = f"event {thumb.event_id} has no thumbnail"
                batch.reject(
                    incoming.topic, incoming.payload, Rejected(wire.THUMB_UNEXPECTED, detail, thumb.node)
                )
                continue
            elif event[1] == thumb.sha256:
                state = "ok"
            elif thumb.stands_for(event[1]):
                state = "degraded"  # re-encoded on the node for a slow link, naming the original
            else:
                detail = f"sha256 {thumb.sha256} but event {thumb.event_id} names {event[1]}"
                batch.reject(
                    incoming.topic, incoming.payload, Rejected(wire.THUMB_MISMATCH, detail, thumb.node)
                )
                continue
            before = current.get(thumb.event_id)
            if before is not None and not (before == "degraded" and state == "ok"):
                continue  # a re-delivery
            if before is not None:  # the original after a degraded copy: it takes the copy's place
                self.db.execute("DELETE FROM thumbs WHERE event_id = ?", (thumb.event_id,))
            current[thumb.event_id] = state
            rows.append(
                (
                    thumb.event_id,
                    thumb.node,
                    state,
                    int(thumb.degraded),
                    thumb.sha256,
                    len(thumb.jpeg),
                    thumb.jpeg,
                    batch.now,
                )
            )
            batch.out.thumbs += state != "pending"
        self.db.executemany(THUMB_INSERT, rows)

    def _match_pending_thumbs(self, events: list[Event], batch: Batch) -> None:
        """Thumbnails that arrived before their events are checked now."""
        by_id = {e.id: e for e in events}
        pending = lookup(
            self.db,
            "SELECT event_id, node, sha256, degraded, jpeg FROM thumbs WHERE state = 'pending' AND event_id IN ({})",
            list(by_id),
        )
        for event_id, node, sha256, degraded, jpeg in pending:
            event = by_id[event_id]
            reason = detail = None
            if node != event.node:
                reason, detail = (
                    wire.NODE_MISMATCH,
                    f"thumbnail on {node}'s topic for {event.node}'s event {event_id}",
                )
            elif event.thumb_sha256 is None:
                reason, detail = wire.THUMB_UNEXPECTED, f"event {event_id} has no thumbnail"
            elif not wire.Thumb(
                node, event_id, bytes(jpeg), sha256, bool(degraded), wire.degraded_original(bytes(jpeg))
            ).stands_for(event.thumb_sha256):
                reason, detail = (
                    wire.THUMB_MISMATCH,
                    f"sha256 {sha256} but event {event_id} names {event.thumb_sha256}",
                )
            if reason is not None and detail is not None:
                self.db.execute("DELETE FROM thumbs WHERE event_id = ?", (event_id,))
                batch.reject(
                    f"{self.prefix}/{node}/thumbs/{event_id}", bytes(jpeg), Rejected(reason, detail, node)
                )
                continue
            state = "ok" if sha256 == event.thumb_sha256 else "degraded"
            self.db.execute("UPDATE thumbs SET state = ? WHERE event_id = ?", (state, event_id))
            batch.out.thumbs += 1

    # -- status, telemetry, replies ------------------------------------------------------------------
    def _statuses(self, items: list[Status], nodes: dict[str, NodeState], batch: Batch) -> None:
        rows = []
        for status in items:
            state = nodes[status.node]
            if status.retained and status.text == state.status_body:
                continue  # the broker replays the retained status on every subscription: not news
            rows.append((status.node, batch.now, status.state, status.text))
            state.status_body = status.text
            state.set(
                status_state=status.state,
                status_at=batch.now,
                status_body=status.text,
                agent_version=text(status.body.get("agent")),
                model=text(status.body.get("model")),
            )
        self.db.executemany(
            "INSERT INTO status_history (node, received_at, state, body) VALUES (?, ?, ?, ?)", rows
        )
        batch.out.records += len(rows)

    def _telemetry(self, items: list[Telemetry], nodes: dict[str, NodeState], batch: Batch) -> None:
        new = auditheads.fresh(self.db, items)  # before storing them: re-deliveries raise nothing twice
        auditheads.check(self.db, new, batch, self._alarm)
        self.db.executemany(
            "INSERT INTO telemetry (node, digest, received_at, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (node, digest) DO NOTHING",
            [(t.node, t.digest, batch.now, t.text) for t in items],
        )
        for telemetry in items:
            body, state = telemetry.body, nodes[telemetry.node]
            found = body.get("versions")
            versions: dict[str, Any] = found if isinstance(found, dict) else {}
            state.set(
                telemetry_at=batch.now,
                telemetry_body=telemetry.text,
                agent_version=text(versions.get("agent")),
                model=text(versions.get("model")),
            )
            gnss = body.get("gnss")
            mode = wire.fix_mode(gnss.get("mode")) if isinstance(gnss, dict) else None
            if isinstance(gnss, dict) and mode in GNSS_MODES:
                location = wire.location_of({"lat": gnss.get("lat"), "lon": gnss.get("lon"), "mode": mode})
                if location is not None:
                    state.place(location, batch.now)
        batch.out.records += len(items)

    def _replies(self, items: list[Reply], batch: Batch) -> None:
        self.db.executemany(
            "INSERT INTO replies (node, digest, request_id, command, status, received_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, digest) DO NOTHING",
            [(r.node, r.digest, r.request_id, r.command, r.status, batch.now, r.text) for r in items],
        )
        batch.out.records += len(items)

    # -- alarms --------------------------------------------------------------------------------------
    def _alarm(self, node: str | None, kind: str, detail: dict[str, Any], now: float) -> int:
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
                alarm_id = self._alarm(node, "gap", detail, now)
                self.db.execute(
                    "UPDATE gaps SET alarm_id = ? WHERE node = ? AND from_seq = ?", (alarm_id, node, low)
                )
                lines.append(
                    f"{node}: events seq {low}..{high} ({high - low + 1}) missing for {now - opened_at:.0f} s "
                    f"(alarm {alarm_id})"
                )
        return lines
