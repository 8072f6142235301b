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
    from agent.app import state_dir_for

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
    from agent.app import state_dir_for

    config = load_config(args.config).config
    folder = (args.state_dir or state_dir_for(config)).expanduser() / "audit"
    if not folder.is_dir():
        print(f"agent: no audit log in {folder}", file=sys.stderr)
        return 1
    log = AuditLog(folder)
    if args.verify:
        problems = log.verify()
        for problem in problems:
            print(f"agent: audit log: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"{folder}: {sum(1 for _ in log.entries())} entries, chain intact")
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
    audit.add_argument("--verify", action="store_true", help="check the hash chain; exit 1 if broken")
    audit.set_defaults(func=cmd_audit)
