"""`agent check-config FILE`: validate a config and point at the bad line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import dump_toml, load_config


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = load_config(args.file, environ={} if args.ignore_env else None)
    if args.print:
        sys.stdout.write(dump_toml(loaded.config))
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
