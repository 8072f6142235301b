"""`vigil-fleet gaps`: missing seq ranges per node (empty lists: nothing lost)."""

from __future__ import annotations

import argparse

from fleet.commands.common import add_db, add_json, open_db, print_json
from fleet.store.reader import gaps_report


def cmd_gaps(args: argparse.Namespace) -> int:
    db = open_db(args)
    try:
        report = gaps_report(db, args.node)
    finally:
        db.close()
    if args.json:
        print_json(report)
        return 0
    nodes = report["nodes"]
    if not nodes:
        print("no nodes yet")
    for node, info in nodes.items():
        missing = info["missing"]
        count = sum(high - low + 1 for low, high in missing)
        ranges = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in missing[:20])
        more = f" and {len(missing) - 20} more ranges" if len(missing) > 20 else ""
        line = f"{node}: {info['received']} received, seq up to {info['max_seq']}"
        print(f"{line}, {count} missing: {ranges}{more}" if missing else f"{line}, none missing")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gaps", help="missing event seq ranges per node")
    add_db(p)
    add_json(p)
    p.add_argument("--node", metavar="ID", help="only this node")
    p.set_defaults(func=cmd_gaps)
