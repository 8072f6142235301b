"""`vigil-fleet audit NODE`: the audit-log heads a node has published, and the alarms they raised.

Each line is SEQ:MAC, what `agent privacy audit --verify --head SEQ:MAC` checks a copy of the node's
log against: a log rewritten or cut short after a head was published no longer matches it.
"""

from __future__ import annotations

import argparse

from fleet.commands.common import add_db, add_json, iso, open_db, print_json


def cmd_audit(args: argparse.Namespace) -> int:
    from fleet.store.auditheads import heads

    db = open_db(args)
    try:
        found = heads(db, args.node)
        with db.read():
            alarms = db.all(
                "SELECT kind, detail, opened_at FROM alarms WHERE node = ? AND kind LIKE 'audit%' "
                "AND cleared_at IS NULL ORDER BY opened_at",
                (args.node,),
            )
    finally:
        db.close()
    if args.json:
        print_json({"node": args.node, "heads": found,
                    "alarms": [{"kind": k, "detail": d, "opened_at": o} for k, d, o in alarms]})
        return 0
    if not found:
        print(f"no audit heads from {args.node} yet (they come with its telemetry)")
        return 0
    for head in found:
        print(f"{head['seq']}:{head['mac']}  (telemetry {head['telemetry_seq'][0]}..{head['telemetry_seq'][1]}, "
              f"first seen {iso(head['first_at'])})")
    for kind, detail, opened_at in alarms:
        print(f"ALARM {kind} since {iso(opened_at)}: {detail}")
    return 1 if alarms else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="the audit-log heads a node published (SEQ:MAC for agent privacy audit --verify --head), and alarms",
    )
    p.add_argument("node", metavar="NODE")
    add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_audit)
