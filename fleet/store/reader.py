"""The read side: what `vigil-fleet status/gaps/events`, the operators' page and /metrics show.

Each function runs in one read transaction (a consistent snapshot) and returns plain data. A node's
state combines its retained status with how recently anything arrived from it: `online`, `offline`
(it said so, or its last will did), `silent` (online by its last word, but nothing for
`silent_after_s`: a broker node that died with it connected publishes no will) or `unknown`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from fleet.store.db import Database
from fleet.wire import expand, fix_mode

SILENT_AFTER_S = 300.0  # five telemetry intervals of a default node
HOUR_S = 3600.0
RATE_WINDOW_S = 300.0


@dataclass
class NodeRow:
    node: str
    state: str
    last_seen: float | None
    status_at: float | None
    agent: str | None
    model: str | None
    backlog: int | None
    backlog_oldest_s: float | None
    link: str | None
    signal_dbm: float | None
    gnss: str | None
    clock_trusted: bool | None
    events_last_hour: int
    received: int
    max_seq: int
    open_gaps: int
    missing: int
    alarms: int
    lat: float | None
    lon: float | None
    position: str | None  # "2d"/"3d" (GNSS), "static" (configured), None
    telemetry_at: float | None
    audit_seq: int | None = None  # the head of the node's audit log, from its latest telemetry
    audit_alarm: str | None = None  # "audit_rewind" / "audit_fork" while such an alarm is open

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_state(status_state: str | None, last_seen: float | None, now: float, silent_after_s: float) -> str:
    if status_state is None:
        return "unknown"
    if status_state == "offline":
        return "offline"
    if last_seen is None or now - last_seen > silent_after_s:
        return "silent"
    return "online"


def _json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def telemetry_summary(body: dict[str, Any]) -> dict[str, Any]:
    """The figures an operator scans for, out of a node's telemetry record (missing ones are None)."""
    spool = _dict(body.get("spool"))
    classes = _dict(spool.get("classes"))
    found = [c.get("oldest_age_s") for c in classes.values() if isinstance(c, dict)]
    ages = [float(a) for a in found if isinstance(a, int | float)]
    link, modem, gnss = _dict(body.get("link")), _dict(body.get("modem")), _dict(body.get("gnss"))
    clock = _dict(body.get("clock"))
    link_text = None
    if modem:
        link_text = " ".join(str(v) for v in (modem.get("technology"), modem.get("operator")) if v) or str(
            modem.get("state") or "modem"
        )
    elif link:
        link_text = "connected" if link.get("connected") else "disconnected"
    signal = modem.get("rsrp_dbm") if modem.get("rsrp_dbm") is not None else modem.get("rssi_dbm")
    gnss_text = None
    if gnss:
        mode = fix_mode(gnss.get("mode"))
        gnss_text = (
            f"{mode} fix, {gnss.get('sats')} sats"
            if mode in ("2d", "3d")
            else str(gnss.get("state") or "no fix")
        )
    depth = spool.get("depth")
    audit = _dict(body.get("audit"))
    audit_seq = audit.get("seq")
    return {
        "audit_seq": audit_seq if isinstance(audit_seq, int) and not isinstance(audit_seq, bool) else None,
        "backlog": int(depth) if isinstance(depth, int) else None,
        "backlog_oldest_s": max(ages) if ages else None,
        "link": link_text,
        "signal_dbm": float(signal) if isinstance(signal, int | float) else None,
        "gnss": gnss_text,
        "clock_trusted": clock.get("trusted") if isinstance(clock.get("trusted"), bool) else None,
    }


def nodes_overview(
    db: Database, now: float | None = None, silent_after_s: float = SILENT_AFTER_S
) -> list[NodeRow]:
    now = time.time() if now is None else now
    with db.read():
        rows = db.all(
            "SELECT node, status_state, last_seen, status_at, agent_version, model, telemetry_body, received, "
            "max_seq, lat, lon, pos_mode, telemetry_at FROM nodes ORDER BY node"
        )
        hour: dict[str, int] = dict(
            db.all("SELECT node, COUNT(*) FROM events WHERE ts_epoch >= ? GROUP BY node", (now - HOUR_S,))
        )
        gaps = {
            r[0]: (int(r[1]), int(r[2]))
            for r in db.all("SELECT node, COUNT(*), SUM(to_seq - from_seq + 1) FROM gaps GROUP BY node")
        }
        alarms: dict[str, int] = dict(
            db.all("SELECT node, COUNT(*) FROM alarms WHERE cleared_at IS NULL GROUP BY node")
        )
        audit_alarms: dict[str, str] = dict(
            db.all(
                "SELECT node, MIN(kind) FROM alarms WHERE cleared_at IS NULL AND kind LIKE 'audit%' GROUP BY node"
            )
        )
    out = []
    for (
        node,
        status,
        last_seen,
        status_at,
        agent,
        model,
        telemetry,
        received,
        max_seq,
        lat,
        lon,
        pos_mode,
        telemetry_at,
    ) in rows:
        summary = telemetry_summary(_json(telemetry))
        open_gaps, missing = gaps.get(node, (0, 0))
        out.append(
            NodeRow(
                node=node,
                state=node_state(status, last_seen, now, silent_after_s),
                last_seen=last_seen,
                status_at=status_at,
                agent=agent,
                model=model,
                events_last_hour=int(hour.get(node, 0)),
                received=int(received),
                max_seq=int(max_seq),
                open_gaps=open_gaps,
                missing=missing,
                alarms=int(alarms.get(node, 0)),
                lat=lat,
                lon=lon,
                position=pos_mode,
                telemetry_at=telemetry_at,
                audit_alarm=audit_alarms.get(node),
                **summary,
            )
        )
    return out


def gaps_report(db: Database, node: str | None = None) -> dict[str, Any]:
    """`{"nodes": {"<node>": {"received": N, "max_seq": M, "missing": [[from, to], ...]}}}`"""
    where, params = ("WHERE node = ?", (node,)) if node else ("", ())
    with db.read():
        nodes = db.all(f"SELECT node, received, max_seq FROM nodes {where} ORDER BY node", params)
        ranges = db.all(
            f"SELECT node, from_seq, to_seq, opened_at, alarm_id FROM gaps {where} ORDER BY node, from_seq",
            params,
        )
    report: dict[str, Any] = {
        name: {"received": int(received), "max_seq": int(max_seq), "missing": []}
        for name, received, max_seq in nodes
    }
    for name, low, high, _opened, _alarm in ranges:
        report.setdefault(name, {"received": 0, "max_seq": 0, "missing": []})["missing"].append(
            [int(low), int(high)]
        )
    return {"nodes": report}


def gap_details(db: Database, node: str) -> list[dict[str, Any]]:
    with db.read():
        rows = db.all(
            "SELECT from_seq, to_seq, opened_at, alarm_id FROM gaps WHERE node = ? ORDER BY from_seq", (node,)
        )
    return [{"from": int(a), "to": int(b), "opened_at": o, "alarm": alarm} for a, b, o, alarm in rows]


def _whole(text: str, node: str) -> str:
    if '"vigil.event/1.1"' not in text:
        return text
    return json.dumps(expand(json.loads(text), node), separators=(",", ":"), ensure_ascii=False)


def events(
    db: Database,
    *,
    node: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    limit: int = 100,
) -> list[str]:
    """Event records, oldest first: the latest `limit`, or the first `limit` at or after `since` (event
    time). Stored as the nodes sent them; a compact `vigil.event/1.1` record comes back whole, as the
    `vigil.event/1` record it stands for (docs/events.md), so every reader gets one shape."""
    clauses, params = [], []
    for clause, value in (("node = ?", node), ("type = ?", kind), ("ts_epoch >= ?", since)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    order = "ASC" if since is not None else "DESC"
    with db.read():
        rows = db.all(
            f"SELECT body, node FROM events {where} ORDER BY ts_epoch {order}, node, seq {order} LIMIT ?",
            [*params, limit],
        )
    bodies = [_whole(str(r[0]), str(r[1])) for r in rows]
    return bodies if since is not None else bodies[::-1]


def recent_events(db: Database, *, node: str | None = None, limit: int = 30) -> list[dict[str, Any]]:
    """What arrived last (arrival order), with its thumbnail's state, for the page."""
    where, params = ("WHERE e.node = ?", [node]) if node else ("", [])
    with db.read():
        rows = db.all(
            "SELECT e.id, e.node, e.seq, e.type, e.priority, e.label, e.ts, e.received_at, e.historical, "
            "e.thumb_sha256, t.state FROM events e LEFT JOIN thumbs t ON t.event_id = e.id "
            f"{where} ORDER BY e.received_at DESC, e.seq DESC LIMIT ?",
            [*params, limit],
        )
    return [
        {
            "id": r[0],
            "node": r[1],
            "seq": int(r[2]),
            "type": r[3],
            "priority": r[4],
            "label": r[5],
            "ts": r[6],
            "received_at": r[7],
            "historical": bool(r[8]),
            "thumb": r[10] if r[9] is not None else None,
        }
        for r in rows
    ]


def thumbnail(db: Database, event_id: str) -> tuple[bytes, str] | None:
    """The JPEG of an event and its state (`ok`, `degraded`, `pending`)."""
    with db.read():
        row = db.one("SELECT jpeg, state FROM thumbs WHERE event_id = ?", (event_id,))
    return (bytes(row[0]), str(row[1])) if row else None


def node_detail(
    db: Database, node: str, now: float | None = None, silent_after_s: float = SILENT_AFTER_S
) -> dict[str, Any] | None:
    now = time.time() if now is None else now
    overview = [row for row in nodes_overview(db, now, silent_after_s) if row.node == node]
    if not overview:
        return None
    with db.read():
        status, telemetry = db.one(
            "SELECT status_body, telemetry_body FROM nodes WHERE node = ?", (node,)
        ) or (None, None)
        history = db.all(
            "SELECT received_at, body FROM telemetry WHERE node = ? AND received_at >= ? ORDER BY received_at",
            (node, now - 86400),
        )
        states = db.all(
            "SELECT received_at, state FROM status_history WHERE node = ? ORDER BY received_at DESC LIMIT 50",
            (node,),
        )
        alarms = db.all(
            "SELECT id, kind, detail, opened_at, cleared_at FROM alarms WHERE node = ? "
            "ORDER BY opened_at DESC LIMIT 50",
            (node,),
        )
        replies = db.all(
            "SELECT received_at, request_id, command, status FROM replies WHERE node = ? "
            "ORDER BY received_at DESC LIMIT 10",
            (node,),
        )
    return {
        "node": overview[0].as_dict(),
        "status": _json(status),
        "telemetry": _json(telemetry),
        "health": health_series(history),
        "status_history": [{"at": at, "state": state} for at, state in states],
        "gaps": gap_details(db, node),
        "alarms": [
            {"id": i, "kind": k, "detail": _json(d), "opened_at": o, "cleared_at": c}
            for i, k, d, o, c in alarms
        ],
        "replies": [{"at": at, "id": rid, "command": cmd, "status": st} for at, rid, cmd, st in replies],
        "events": recent_events(db, node=node, limit=20),
    }


def health_series(rows: list[tuple[Any, ...]], points: int = 288) -> dict[str, list[Any]]:
    """A day of telemetry as a few series for small charts, thinned to at most `points`."""
    step = max(1, len(rows) // points)
    series: dict[str, list[Any]] = {"at": [], "backlog": [], "temp_c": [], "fps": [], "signal_dbm": []}
    for at, text in rows[::step]:
        body = _json(text)
        summary = telemetry_summary(body)
        series["at"].append(at)
        series["backlog"].append(summary["backlog"])
        series["temp_c"].append(_dict(body.get("cpu")).get("temp_c"))
        series["fps"].append(_dict(body.get("fps")).get("analysis"))
        series["signal_dbm"].append(summary["signal_dbm"])
    return series


def quarantine(db: Database, *, reason: str | None = None, limit: int = 50) -> dict[str, Any]:
    where, params = ("WHERE reason = ?", [reason]) if reason else ("", [])
    with db.read():
        counts: dict[str, int] = dict(db.all("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"))
        rows = db.all(
            f"SELECT id, received_at, topic, node, reason, detail, size FROM quarantine {where} "
            "ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
    return {
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "latest": [
            {"id": int(i), "received_at": at, "topic": t, "node": n, "reason": r, "detail": d, "size": int(s)}
            for i, at, t, n, r, d, s in rows
        ],
    }


def ingesters(db: Database) -> list[dict[str, Any]]:
    with db.read():
        rows = db.all(
            "SELECT name, host, pid, started_at, heartbeat_at, broker, connected, stats FROM ingesters ORDER BY name"
        )
    return [
        {
            "name": n,
            "host": h,
            "pid": int(p),
            "started_at": s,
            "heartbeat_at": hb,
            "broker": b,
            "connected": bool(c),
            "stats": _json(st),
        }
        for n, h, p, s, hb, b, c, st in rows
    ]


def metrics_snapshot(
    db: Database, now: float | None = None, silent_after_s: float = SILENT_AFTER_S
) -> dict[str, Any]:
    """Everything /metrics exports, read once per scrape."""
    now = time.time() if now is None else now
    nodes = nodes_overview(db, now, silent_after_s)
    with db.read():
        recent: dict[str, int] = dict(
            db.all(
                "SELECT node, COUNT(*) FROM events WHERE received_at >= ? GROUP BY node",
                (now - RATE_WINDOW_S,),
            )
        )
        lags = db.all(
            "SELECT received_at - ts_epoch FROM events WHERE received_at >= ? AND historical = 0 "
            "AND clock_trusted = 1 AND ts_epoch IS NOT NULL ORDER BY received_at DESC LIMIT 2000",
            (now - RATE_WINDOW_S,),
        )
        quarantined: dict[str, int] = dict(db.all("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"))
        thumbs: dict[str, int] = dict(db.all("SELECT state, COUNT(*) FROM thumbs GROUP BY state"))
    return {
        "nodes": nodes,
        "events_per_s": {node: int(count) / RATE_WINDOW_S for node, count in recent.items()},
        "ingest_lag_s": statistics.median([float(r[0]) for r in lags]) if lags else None,
        "quarantined": {k: int(v) for k, v in quarantined.items()},
        "thumbs": {k: int(v) for k, v in thumbs.items()},
        "ingesters": ingesters(db),
    }
