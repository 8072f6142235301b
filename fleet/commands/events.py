"""`vigil-fleet events`: stored events as the nodes sent them."""

from __future__ import annotations

import argparse
import json

from fleet.commands.common import add_db, add_json, open_db, parse_since, positive_int
from fleet.store.reader import events


def cmd_events(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    db = open_db(args)
    try:
        bodies = events(db, node=args.node, kind=args.type, since=since, limit=args.limit)
    finally:
        db.close()
    for text in bodies:
        if args.json:
            print(text)
            continue
        e = json.loads(text)
        what = " ".join(str(e[k]) for k in ("label", "zone", "reason") if e.get(k))
        flags = " historical" if e.get("historical") else ""
        print(f"{e['ts']}  {e['node']:<16} #{e['seq']:<7} {e['type']:<18} {what}{flags}".rstrip())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "events",
        help="stored events, oldest first (--json: one record per line, exactly as the node sent it)",
        description="Without --since: the latest --limit events. With --since: the first --limit events at "
        "or after that time (event time), so a script can page through with the last one's ts.",
    )
    add_db(p)
    add_json(p)
    p.add_argument("--node", metavar="ID")
    p.add_argument("--type", metavar="T", help="event type, e.g. object_appeared, tamper")
    p.add_argument("--since", metavar="ISO", help="e.g. 2026-05-01T10:00:00Z")
    p.add_argument("--limit", type=positive_int, default=100, metavar="N", help="default 100")
    p.set_defaults(func=cmd_events)
