"""Command line: `agent [--simulate] …` runs the node; subcommands are tools for people.

User errors (bad config, missing model, unreadable video, no camera) print one clear line and exit
non-zero, without a traceback; `-v` shows the traceback for bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import agent
from agent.config import ConfigError

log = logging.getLogger("agent")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Subcommand modules; each has register(subparsers) that sets `func` on its parser.
COMMAND_MODULES = (
    "agent.commands.config",
    "agent.commands.models",
    "agent.commands.spool",
    "agent.commands.modem",
    "agent.commands.gps",
    "agent.commands.privacy",
)


def setup_logging(verbose: int, level: str = "info") -> None:
    chosen = logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=chosen,
        stream=sys.stderr,
        force=True,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--simulate",
        action="store_true",
        help="laptop mode: webcam if one opens, else the synthetic scene; events printed as JSON lines",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (see docs/config.md)")
    p.add_argument(
        "--source",
        metavar="SPEC",
        help="synthetic[:SEED], file:PATH or a path, webcam[:INDEX], rtsp://..., picamera2",
    )
    p.add_argument("--model", metavar="PATH|NAME", help="ONNX model file (card beside it) or a manifest name")
    p.add_argument(
        "--max-frames", type=positive_int, metavar="N", help="stop after N analysed frames (exit 0)"
    )
    p.add_argument("--node-id", metavar="ID", help="node identity (default from config, else sim-node)")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="spool, thumbnails and counters live here")
    p.add_argument(
        "--events-out", type=Path, metavar="PATH", help="append events as JSON lines here, not stdout"
    )
    p.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pace files and the synthetic scene at their fps (--no-realtime: as fast as possible)",
    )
    p.add_argument("--no-motion-gate", action="store_true", help="run the detector on every frame")
    p.add_argument("--broker", metavar="URL", help="publish to this MQTT broker: mqtt://host:port or mqtts://host:port")
    p.add_argument("--link-profile", metavar="NAME|FILE",
                   help="simulate a link between agent and broker: good, flaky, brownout, lte-cell-edge or a TOML file")
    p.add_argument("--http", metavar="[ADDR:]PORT",
                   help="serve the status page here (default 127.0.0.1; port 0: any free port; off: none)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug logging and tracebacks")


# CLI flag -> config path; flags beat environment beat file beat defaults.
FLAG_PATHS = {
    "source": ("capture.source", "--source"),
    "model": ("detect.model", "--model"),
    "node_id": ("node.id", "--node-id"),
    "state_dir": ("node.state_dir", "--state-dir"),
    "realtime": ("capture.realtime", "--realtime"),
    "broker": ("uplink.broker", "--broker"),
    "link_profile": ("uplink.link_profile", "--link-profile"),
    "http": ("http.listen", "--http"),
}


def overrides_from(args: argparse.Namespace) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    values: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for attr, (path, flag) in FLAG_PATHS.items():
        value = getattr(args, attr, None)
        if value is not None:
            values[path] = str(value) if isinstance(value, Path) else value
            origins[tuple(path.split("."))] = flag
    if getattr(args, "no_motion_gate", False):
        values["motion.enabled"] = False
        origins[("motion", "enabled")] = "--no-motion-gate"
    for path, (value, flag) in getattr(args, "extra_overrides", {}).items():
        values[path] = value
        origins[tuple(path.split("."))] = flag
    return values, origins


def cmd_run(args: argparse.Namespace) -> int:
    from agent.app import Agent, RunOptions
    from agent.errors import AgentError

    overrides, origins = overrides_from(args)
    if (
        args.simulate
        and args.source is None
        and os.environ.get("VIGIL_CAPTURE__SOURCE") is None
        and not args.config
    ):
        overrides.setdefault("capture.source", "auto")
    from agent.control.persist import load_with_overlay  # + live changes kept by the control plane

    loaded = load_with_overlay(args.config, overrides, origins)
    setup_logging(args.verbose, loaded.config.log.level)
    from agent.config.security import exposures

    for warning in exposures(loaded.config):  # refused outright with node.profile = "production"
        log.warning("%s", warning)
    options = RunOptions(
        simulate=args.simulate,
        events_out=args.events_out,
        max_frames=args.max_frames,
        print_events=args.simulate or args.events_out is not None or loaded.config.events.stdout,
        config_path=args.config,
        config_origins=loaded.origins,
    )
    try:
        return Agent(loaded.config, options).run()
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent",
        description="Vigil street-camera node agent. Without a subcommand it runs the node.",
        epilog="Try: agent --simulate",
    )
    parser.add_argument("--version", action="version", version=f"vigil-agent {agent.__version__}")
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_run)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    run = sub.add_parser("run", help="run the node (the default)")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        where = f" ({exc.issues[0].origin.split(':')[0]})" if exc.issues and exc.issues[0].origin else ""
        print(f"agent: invalid configuration{where}:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
