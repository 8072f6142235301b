"""`agent check-config FILE`: validate a config and point at the bad line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import dump_toml, load_config
from agent.config.security import exposures


def cmd_check_config(args: argparse.Namespace) -> int:
    environ: dict[str, str] | None = {} if args.ignore_env else None
    loaded = load_config(args.file, environ=environ)  # errors name the file and line
    for warning in exposures(loaded.config):  # refused outright with node.profile = "production"
        print(f"agent: warning: {warning}", file=sys.stderr)
    if args.print:
        # what the agent would run with: the file, live changes kept on this node, the environment
        from agent.control.persist import load_with_overlay

        effective = load_with_overlay(args.file, environ=environ)
        overlays = sorted({o for o in effective.origins.values() if o.startswith("overlay ")})
        for origin in overlays:
            sys.stdout.write(f"# includes live changes from {origin.removeprefix('overlay ')}\n")
        sys.stdout.write(dump_toml(effective.config, hide_secrets=True))
    else:
        print(f"{args.file}: OK")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a TOML config file",
        description="Validate a config file. Errors name the field, the bad value, the reason "
        "and the line. VIGIL_SECTION__FIELD environment variables are applied as the agent would.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--print", action="store_true", help="print the effective configuration (with defaults)")
    p.add_argument("--ignore-env", action="store_true", help="do not apply VIGIL_* environment overrides")
    p.set_defaults(func=cmd_check_config)
