"""`agent privacy report` (what leaves the node) and `agent privacy audit` (the node's audit log)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.config import load_config
from agent.privacy.audit import AuditLog
from agent.privacy.report import build_report, render_markdown


def cmd_report(args: argparse.Namespace) -> int:
    from agent.paths import state_dir_for

    loaded = load_config(args.config)
    config = loaded.config
    state_dir = (args.state_dir or state_dir_for(config)).expanduser()
    report = build_report(config, config_path=args.config, state_dir=state_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(render_markdown(report))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from agent.paths import state_dir_for
    from agent.privacy.auditkey import KEY_NAME, AuditKeyError, read_key

    config = load_config(args.config).config
    folder = (args.state_dir or state_dir_for(config)).expanduser() / "audit"
    if not folder.is_dir():
        print(f"agent: no audit log in {folder}", file=sys.stderr)
        return 1
    key_file = args.key_file or config.privacy.audit.key_file or folder / KEY_NAME
    key = None
    if key_file.exists():
        try:
            key = read_key(key_file)
        except AuditKeyError as exc:
            print(f"agent: {exc}", file=sys.stderr)
            return 1
    log = AuditLog(folder, key=key)
    if args.verify:
        heads = {}
        for text in args.head or []:
            seq, _, mac = text.partition(":")
            if not seq.isdigit() or len(mac) != 64:
                print(f"agent: --head {text!r} must be SEQ:MAC (as vigil-fleet audit prints them)", file=sys.stderr)
                return 2
            heads[int(seq)] = mac
        problems = log.verify(heads)
        for problem in problems:
            print(f"agent: audit log: {problem}", file=sys.stderr)
        if problems:
            return 1
        head = log.head()
        keyed = f"keyed ({log.kid})" if key is not None else "NOT keyed (no audit key found)"
        print(f"{folder}: {sum(1 for _ in log.entries())} entries, chain intact, {keyed}; "
              f"head {head['seq']}:{head['mac']}" + (f"; {len(heads)} published head(s) match" if heads else ""))
        return 0
    for entry in log.entries():
        print(json.dumps(entry) if args.json else f"{entry['ts']} #{entry['seq']} {entry['action']} by {entry['actor']}"
              f" {json.dumps(entry['details'])}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy", help="what leaves the node, and the node's audit log")
    psub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    report = psub.add_parser(
        "report",
        help="what leaves the node for the effective configuration (Markdown or JSON)",
        description="For a data-protection impact assessment: topics, fields, image sizes, redaction, "
        "retention, classes analysed, zones and rules, derived from the effective configuration.",
    )
    report.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (default: defaults)")
    report.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    report.add_argument("--state-dir", type=Path, help="where to look for installed models")
    report.set_defaults(func=cmd_report)
    audit = psub.add_parser("audit", help="print or verify the audit log (<state_dir>/audit)")
    audit.add_argument("--config", type=Path, metavar="FILE")
    audit.add_argument("--state-dir", type=Path)
    audit.add_argument("--json", action="store_true", help="one JSON object per entry")
    audit.add_argument("--verify", action="store_true", help="check the keyed chain; exit 1 if broken")
    audit.add_argument(
        "--head",
        action="append",
        metavar="SEQ:MAC",
        help="with --verify: a head the back office recorded (vigil-fleet audit NODE); the log must match it",
    )
    audit.add_argument(
        "--key-file", type=Path, help="the node's audit key (default: privacy.audit.key_file, else audit/audit.key)"
    )
    audit.set_defaults(func=cmd_audit)
