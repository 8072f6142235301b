"""Command line of releases and offline images: `vigil-provision release init-key|build` and the
`--offline` options of `vigil-provision install` (kept here so cli.py only wires them in)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from provisioning import release
from provisioning.commands import Outcome
from provisioning.errors import ProvisionError
from provisioning.fleet import Fleet
from provisioning.offline import OfflineOptions
from provisioning.wheelhouse import DEFAULT_PYTHON, Target


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_init_key(args: argparse.Namespace, fleet: Fleet) -> Outcome:
    out = Outcome(changed=True)
    for line in release.init_key(fleet):
        out.say(line)
    return out


def cmd_build(args: argparse.Namespace, fleet: Fleet) -> Outcome:
    target = Target(args.arch, args.python)
    agent_wheel = Path(args.agent).expanduser().resolve() if args.agent else None
    source = Path(args.source).expanduser().resolve() if args.source else None
    built = release.build(
        fleet, target, Path(args.out).expanduser().resolve(), agent_wheel=agent_wheel, source=source, log=_progress
    )
    out = Outcome(changed=True)
    summary = built.summary()
    out.say(f"release {built.version} for {target.describe()}: {built.path}")
    out.say(f"sha256 {built.sha256}, {summary['size'] / 1e6:.1f} MB, signed with key {summary['key_id']}")
    out.say("packages: " + ", ".join(f"{k} {v}" for k, v in summary["packages"].items()))
    out.say("update a node (publish on vigil/NODE/cmd/agent/update; serve the file where nodes reach it):")
    out.say("  " + json.dumps({"id": "update-1", "args": release.update_request(built)}))
    return out


def _arch(text: str) -> str:
    if text not in ("arm64", "amd64"):
        raise argparse.ArgumentTypeError("arm64 (Raspberry Pi 3/4/5, 64-bit OS) or amd64")
    return text


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    fleet_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    group = sub.add_parser(
        "release",
        help="signed agent releases for over-the-air updates",
        description="The fleet's release key and the release files nodes install with `agent/update`.",
    )
    fleet_option(group)
    rsub = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    p = rsub.add_parser("init-key", help="create the fleet's Ed25519 release key (never overwrites)")
    fleet_option(p)
    p.set_defaults(func=cmd_init_key)
    p = rsub.add_parser(
        "build",
        help="agent wheel + wheelhouse for a node platform + signed manifest, as one file",
        description="Builds the agent wheel (from this checkout, --source DIR or --agent WHEEL), downloads every "
        "dependency for the node's architecture and Python (pip, binary wheels only), writes a lock with hashes "
        "and a manifest with versions and sha256s, signs the manifest with the fleet's release key and packs "
        "it all into OUT/vigil-agent-VERSION-ARCH.tar (with a .json summary beside it).",
    )
    fleet_option(p)
    p.add_argument("--arch", type=_arch, default="arm64", help="node architecture (default arm64)")
    p.add_argument("--python", default=DEFAULT_PYTHON, help=f"node's Python X.Y (default {DEFAULT_PYTHON})")
    p.add_argument("--out", required=True, metavar="DIR", help="where the release file goes")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--agent", metavar="WHEEL", help="an agent wheel to release (default: build one)")
    source.add_argument("--source", metavar="DIR", help="the checkout to build the agent wheel from")
    p.set_defaults(func=cmd_build)


def add_offline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        help="with --root: put the agent release (wheelhouse for the node's platform) and the models into the "
        "image, so first boot needs no network",
    )
    p.add_argument("--arch", type=_arch, default="arm64", help="--offline: node architecture (default arm64)")
    p.add_argument("--python", default=DEFAULT_PYTHON, help=f"--offline: node's Python (default {DEFAULT_PYTHON})")
    p.add_argument("--release", metavar="FILE", help="--offline: a release file from `release build` to install")
    p.add_argument(
        "--models-from",
        metavar="URL|DIR",
        help="--offline: fetch the models from this mirror instead of upstream (layout of models/manifest.toml)",
    )
    p.add_argument(
        "--rebuild", action="store_true", help="--offline: build the fleet's release again instead of reusing it"
    )


def install_offline(args: argparse.Namespace, fleet: Fleet) -> int:
    from provisioning.offline import install_offline as run

    if not args.root:
        raise ProvisionError("--offline prepares an image: give --root DIR (the card's root filesystem)")
    if args.skip_apt:
        raise ProvisionError("--offline never runs apt; --skip-apt does not apply")
    options = OfflineOptions(
        target=Target(args.arch, args.python),
        release=Path(args.release).expanduser().resolve() if args.release else None,
        agent_wheel=Path(args.agent).expanduser().resolve() if args.agent else None,
        models_from=args.models_from,
        rebuild=args.rebuild,
    )
    return run(fleet, args.node, Path(args.root).expanduser().resolve(), options, log=print)
