"""`vigil-fleet quarantine`: what the ingest refused and why; `--replay` stores what is now acceptable
(e.g. messages from a node that was added to the inventory after it started publishing)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fleet.commands.common import add_db, add_json, iso, open_db, positive_int, print_json
from fleet.eventschema import EventValidator
from fleet.identity import load_fleet
from fleet.store.db import Database
from fleet.store.reader import quarantine
from fleet.store.writer import BatchWriter
from fleet.wire import REASONS, Incoming, Rejected, WireParser

CHUNK = 200


def replay(db: Database, parser: WireParser, reason: str | None) -> tuple[int, int]:
    """Parse every complete quarantined payload again; store and remove the ones now accepted.
    Returns (replayed, still refused)."""
    where, params = ("AND reason = ?", [reason]) if reason else ("", [])
    writer = BatchWriter(db, parser.prefix)
    replayed = refused = 0
    last_id = 0
    while True:
        rows = db.all(
            f"SELECT id, topic, payload, size, received_at FROM quarantine WHERE id > ? {where} ORDER BY id LIMIT ?",
            [last_id, *params, CHUNK],
        )
        if not rows:
            return replayed, refused
        last_id = int(rows[-1][0])
        items, ids = [], []
        for qid, topic, payload, size, received_at in rows:
            data = bytes(payload)
            if len(data) != size:  # kept truncated (oversized): cannot be stored
                refused += 1
                continue
            incoming = Incoming(topic, data, float(received_at))
            parsed = parser.parse(incoming)
            if isinstance(parsed, Rejected):
                refused += 1
                continue
            items.append((incoming, parsed))
            ids.append(int(qid))
        if items:
            delete = [(f"DELETE FROM quarantine WHERE id IN ({db.marks(len(ids))})", ids)]
            writer.apply(items, also=delete)
            replayed += len(items)


def cmd_quarantine(args: argparse.Namespace) -> int:
    db = open_db(args)
    try:
        if args.replay:
            fleet_dir = args.fleet or os.environ.get("VIGIL_FLEET")
            context = load_fleet(Path(fleet_dir) if fleet_dir else None, None, args.prefix)
            known = context.inventory.check if context.inventory is not None else None
            done, still = replay(db, WireParser(context.prefix, EventValidator(), known), args.reason)
            print(f"replayed {done} message(s); {still} still refused")
            return 0
        report = quarantine(db, reason=args.reason, limit=args.limit)
    finally:
        db.close()
    if args.json:
        print_json(report)
        return 0
    counts = report["counts"]
    print("quarantined: " + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "nothing"))
    for q in report["latest"]:
        print(
            f"{iso(q['received_at'])}  {q['reason']:<18} {q['topic'][:60]:<60} {q['size']:>7} B  {q['detail'][:120]}"
        )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "quarantine",
        help="messages the ingest refused, with the reason; --replay stores the ones now acceptable",
    )
    add_db(p)
    add_json(p)
    p.add_argument("--reason", choices=(*REASONS, "store_error"))
    p.add_argument("--limit", type=positive_int, default=50, metavar="N")
    p.add_argument("--replay", action="store_true", help="parse again with the current inventory and schema")
    p.add_argument(
        "--fleet",
        metavar="DIR",
        help="fleet directory (its inventory and topic prefix; default $VIGIL_FLEET)",
    )
    p.add_argument("--prefix", help="topic prefix (default from fleet.toml, else vigil)")
    p.set_defaults(func=cmd_quarantine)
