"""`agent models list` and `agent models fetch NAME`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent import models
from agent.paths import default_state_dir


def _state_dir(args: argparse.Namespace) -> Path:
    return (args.state_dir or default_state_dir()).expanduser()


def cmd_list(args: argparse.Namespace) -> int:
    rows = models.describe(_state_dir(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if row["installed"] and row["shipped"]:
            state = f"shipped with Vigil ({row['installed']})"
        elif row["installed"]:
            state = f"installed at {row['installed']}"
        else:
            state = "not installed (`agent models fetch NAME`)"
        size = f", {row['size'] / 1e6:.1f} MB" if row["size"] else ""
        print(f"{row['name']:<14} {state}{size}\n  {row['description']}\n  licence: {row['license']}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    progress = models.text_progress() if sys.stderr.isatty() or args.progress else None
    try:
        path = models.fetch(args.name, _state_dir(args), mirror=args.mirror, progress=progress)
    except models.ModelError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {path} (sha256 verified)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list and fetch detector models")
    msub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    lst = msub.add_parser("list", help="models in the manifest and whether they are installed")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--state-dir", type=Path)
    lst.set_defaults(func=cmd_list)
    fetch = msub.add_parser("fetch", help="download a model, verify its sha256, install it with its card")
    fetch.add_argument("name")
    fetch.add_argument(
        "--mirror",
        metavar="URL",
        help=f"fetch from this mirror instead of upstream (or ${models.MIRROR_ENV})",
    )
    fetch.add_argument("--state-dir", type=Path)
    fetch.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not on a terminal"
    )
    fetch.set_defaults(func=cmd_fetch)
