"""`vigil-fleet status`: one row per node."""

from __future__ import annotations

import argparse
import time

from fleet.commands.common import add_db, add_json, ago, duration, iso, open_db, print_json, seconds
from fleet.store.reader import SILENT_AFTER_S, nodes_overview

COLUMNS = (
    ("NODE", 16),
    ("STATE", 8),
    ("SEEN", 5),
    ("AGENT", 7),
    ("MODEL", 12),
    ("BACKLOG", 12),
    ("LINK", 24),
    ("GNSS", 14),
    ("CLOCK", 9),
    ("EV/1H", 6),
    ("GAPS", 10),
    ("AUDIT", 9),
)


def cmd_status(args: argparse.Namespace) -> int:
    db = open_db(args)
    try:
        now = time.time()
        rows = nodes_overview(db, now, args.silent_after)
    finally:
        db.close()
    if args.json:
        print_json({"nodes": [{**r.as_dict(), "last_seen_iso": iso(r.last_seen)} for r in rows]})
        return 0
    if not rows:
        print("no nodes yet (is `vigil-fleet ingest` running?)")
        return 0
    print(" ".join(f"{name:<{width}}" for name, width in COLUMNS).rstrip())
    for r in rows:
        backlog = "-" if r.backlog is None else str(r.backlog)
        if r.backlog_oldest_s is not None:
            backlog += f" ({duration(r.backlog_oldest_s)})"
        link = r.link or "-"
        if r.signal_dbm is not None:
            link = f"{link} {r.signal_dbm:.0f}dBm"
        clock = "-" if r.clock_trusted is None else ("trusted" if r.clock_trusted else "UNTRUSTED")
        gaps = "-" if not r.open_gaps else f"{r.missing} in {r.open_gaps}" + (" !" if r.alarms else "")
        audit = "-" if r.audit_seq is None else f"#{r.audit_seq}"
        if r.audit_alarm is not None:  # the node's audit log went back: someone must look at it
            audit = {"audit_rewind": "REWOUND!", "audit_fork": "FORKED!"}.get(r.audit_alarm, "ALARM!")
        cells = (
            r.node,
            r.state,
            ago(r.last_seen, now),
            r.agent or "-",
            r.model or "-",
            backlog,
            link,
            r.gnss or "-",
            clock,
            str(r.events_last_hour),
            gaps,
            audit,
        )
        print(" ".join(f"{str(c)[:w]:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="one row per node: state, last seen, versions, backlog, link, GNSS, gaps, audit log head (and its alarms)"
    )
    add_db(p)
    add_json(p)
    p.add_argument(
        "--silent-after",
        type=seconds,
        default=SILENT_AFTER_S,
        metavar="DURATION",
        help="an online node heard nothing from for this long is shown silent (default 5m)",
    )
    p.set_defaults(func=cmd_status)
