"""`vigil-fleet`: the back office's command line. Each command is a module with `register(subparsers)`
listed in COMMAND_MODULES (add one there without touching the others).

User errors (bad URL, unreachable database, missing certificate) print one line and exit 1 without a
traceback; `-v` shows debug logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fleet import __version__
from fleet.errors import FleetError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

COMMAND_MODULES = (
    "fleet.commands.ingest",
    "fleet.commands.status",
    "fleet.commands.gaps",
    "fleet.commands.events",
    "fleet.commands.quarantine",
    "fleet.commands.serve",
    "fleet.commands.cmd",
    "fleet.commands.audit",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil-fleet",
        description="Vigil's back office: store every event the nodes publish exactly once (ingest), "
        "see the fleet's health (status, gaps, events, audit) and serve the operators' page (serve); send "
        "signed commands to nodes (cmd).",
    )
    parser.add_argument("--version", action="version", version=f"vigil-fleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        force=True,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code: int = args.func(args)
        return code
    except FleetError as exc:
        if args.verbose:
            logging.getLogger("fleet").exception("error")
        print(f"vigil-fleet: error: {exc}".replace("\n", "\n  "), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vigil-fleet events | head`
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
