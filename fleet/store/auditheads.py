"""Audit heads: the back office's memory of each node's audit log, and the alarms when it goes back.

Every telemetry record carries the head of the node's audit log (`audit: {"seq", "mac"}`: the
sequence number and keyed hash of its newest entry; agent/privacy/audit.py). Telemetry records are
numbered (`seq`, +1 per record, persisted on the node), so the back office can order heads even
when they arrive out of order (a node sends live records before its backlog). For each node it keeps
every distinct head with the first and last telemetry seq that carried it, and raises:

- `audit_rewind` when a later telemetry record carries a lower audit seq than an earlier one (entries
  were removed: the log was truncated or restored from an old copy);
- `audit_fork` when the same audit seq comes with two different macs (the log was rewritten from
  that point on, or another node's log is being passed off as this one's). Each record also names
  its anchor, the entry at the last head the node knows was acknowledged, as its log holds it now:
  a log rewritten behind that head shows there even when it has grown past it again.

Each telemetry record is looked at once (by its digest), so a re-delivery raises nothing twice. The
heads also let someone check a copy of a node's log later: `vigil-fleet audit NODE` prints them for
`agent privacy audit --verify --head SEQ:MAC`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from fleet.store.db import Database
from fleet.store.rows import Batch, lookup
from fleet.wire import Telemetry

MAC = re.compile(r"[0-9a-f]{64}")
UPSERT = (
    "INSERT INTO audit_heads (node, aseq, mac, first_tseq, last_tseq, first_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (node, aseq, mac) DO UPDATE SET "
    "first_tseq = CASE WHEN excluded.first_tseq < audit_heads.first_tseq "
    "THEN excluded.first_tseq ELSE audit_heads.first_tseq END, "
    "last_tseq = CASE WHEN excluded.last_tseq > audit_heads.last_tseq "
    "THEN excluded.last_tseq ELSE audit_heads.last_tseq END"
)
Alarm = Callable[[str | None, str, dict[str, Any], float], int]


def head_of(body: dict[str, Any]) -> tuple[int, int, str] | None:
    """(telemetry seq, audit seq, mac) of a telemetry record, or None when it carries no usable head."""
    head, tseq = body.get("audit"), body.get("seq")
    if not isinstance(head, dict) or not isinstance(tseq, int) or isinstance(tseq, bool):
        return None
    aseq, mac = head.get("seq"), head.get("mac")
    if not isinstance(aseq, int) or isinstance(aseq, bool) or not isinstance(mac, str) or not MAC.fullmatch(mac):
        return None
    return tseq, aseq, mac


def fresh(db: Database, items: Sequence[Telemetry]) -> list[Telemetry]:
    """The telemetry records not stored before (call before storing them)."""
    if not items:
        return []
    known = {(r[0], r[1]) for r in lookup(db, "SELECT node, digest FROM telemetry WHERE digest IN ({})",
                                          [t.digest for t in items])}
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        key = (item.node, item.digest)
        if key not in known and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def check(db: Database, items: Sequence[Telemetry], batch: Batch, alarm: Alarm) -> None:
    for item in items:
        found = head_of(item.body)
        if found is None:
            continue
        tseq, aseq, mac = found
        node = item.node
        other = db.one(
            "SELECT mac FROM audit_heads WHERE node = ? AND aseq = ? AND mac <> ? LIMIT 1", (node, aseq, mac)
        )
        if other is not None:
            detail = {"seq": aseq, "macs": [str(other[0]), mac], "telemetry_seq": tseq}
            alarm_id = alarm(node, "audit_fork", detail, batch.now)
            batch.out.alarms.append(
                f"{node}: audit log forked: entry {aseq} came with two different hashes (alarm {alarm_id})"
            )
        back = db.one(
            "SELECT aseq, first_tseq FROM audit_heads WHERE node = ? AND "
            "((aseq > ? AND first_tseq < ?) OR (aseq < ? AND last_tseq > ?)) ORDER BY aseq DESC LIMIT 1",
            (node, aseq, tseq, aseq, tseq),
        )
        if back is not None:
            earlier, later = (int(back[0]), aseq) if int(back[1]) < tseq else (aseq, int(back[0]))
            detail = {"from_seq": earlier, "to_seq": later, "telemetry_seq": tseq}
            alarm_id = alarm(node, "audit_rewind", detail, batch.now)
            batch.out.alarms.append(
                f"{node}: audit log rewound from entry {earlier} to {later} (alarm {alarm_id})"
            )
        anchor = item.body["audit"].get("anchor")
        if isinstance(anchor, dict) and isinstance(anchor.get("seq"), int) and isinstance(anchor.get("mac"), str):
            recorded = db.one(
                "SELECT mac FROM audit_heads WHERE node = ? AND aseq = ? AND mac <> ? LIMIT 1",
                (node, anchor["seq"], anchor["mac"]),
            )
            if recorded is not None and other is None:
                detail = {"seq": anchor["seq"], "macs": [str(recorded[0]), anchor["mac"]], "telemetry_seq": tseq}
                alarm_id = alarm(node, "audit_fork", detail, batch.now)
                batch.out.alarms.append(
                    f"{node}: audit log rewritten: entry {anchor['seq']}, whose head was published, changed "
                    f"(alarm {alarm_id})"
                )
        db.execute(UPSERT, (node, aseq, mac, tseq, tseq, batch.now))


def heads(db: Database, node: str) -> list[dict[str, Any]]:
    with db.read():
        rows = db.all(
            "SELECT aseq, mac, first_tseq, last_tseq, first_at FROM audit_heads WHERE node = ? "
            "ORDER BY first_tseq, aseq",
            (node,),
        )
    return [
        {"seq": int(a), "mac": str(m), "telemetry_seq": [int(f), int(la)], "first_at": at}
        for a, m, f, la, at in rows
    ]
