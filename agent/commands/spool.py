"""`agent spool stats`: what is waiting to leave the node, per priority class."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.config import load_config
from agent.paths import default_state_dir
from agent.uplink.spool import Spool


def _fmt_bytes(count: int) -> str:
    n = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_stats(args: argparse.Namespace) -> int:
    state_dir = args.state_dir
    if state_dir is None:
        cfg = load_config(args.config).config if args.config else None
        state_dir = cfg.node.state_dir if cfg and cfg.node.state_dir else default_state_dir()
    path = Path(state_dir).expanduser() / "spool"
    if not path.is_dir():
        if path.with_name("spool.db").exists():
            print(f"agent: {path.with_name('spool.db')} is an older agent's spool; it is converted when the "
                  "agent next starts", file=sys.stderr)  # fmt: skip
        else:
            print(f"agent: no spool at {path} (has the agent run with this state directory?)", file=sys.stderr)
        return 1
    try:
        stats = Spool.read_stats(path)
    except (OSError, ValueError) as exc:
        print(f"agent: cannot read spool {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"spool {stats['path']}: {stats['depth']} records, {_fmt_bytes(stats['bytes'])} "
        f"(on disk {_fmt_bytes(stats['disk_bytes'])})"
    )
    print(f"{'class':<10} {'depth':>7} {'bytes':>10} {'oldest':>10}  drops")
    for name, cls in stats["classes"].items():
        oldest = f"{cls['oldest_age_s']:.0f}s" if cls["oldest_age_s"] is not None else "-"
        drops = ", ".join(f"{reason} {d['count']}" for reason, d in cls["drops"].items()) or "none"
        print(f"{name:<10} {cls['depth']:>7} {_fmt_bytes(cls['bytes']):>10} {oldest:>10}  {drops}")
    print("(ages count spool running time, as of the agent's last commit)")
    seqs = ", ".join(f"{k} {v}" for k, v in sorted(stats["seq"].items())) or "none yet"
    print(f"last seq: {seqs}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spool", help="inspect the outgoing spool")
    ssub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    stats = ssub.add_parser("stats", help="depth, bytes, oldest record and drops per priority class")
    stats.add_argument("--state-dir", type=Path, help="the agent's state directory")
    stats.add_argument("--config", type=Path, help="read the state directory from this config")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)
