"""`vigil-provision`: the fleet operator's tool (CA, node bundles, operators, broker config, revocation).

User errors print one clear message and exit 1 (2 for usage), without a traceback; nothing is
written when any input is bad.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.control.roles import ROLES
from provisioning import commands, listing, release_cli
from provisioning.broker import KINDS as BROKER_KINDS
from provisioning.broker import MESSAGE_BYTES, NODE_RATE, OUTAGE_S, BrokerOptions
from provisioning.errors import ProvisionError
from provisioning.files import locked
from provisioning.fleet import Fleet, FleetSettings
from provisioning.inventory import COLUMNS, parse_csv, parse_node
from provisioning.names import has_control_chars, is_topic_prefix

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _fleet(args: argparse.Namespace) -> Fleet:
    path = getattr(args, "fleet", None) or os.environ.get("VIGIL_FLEET")
    if not path:
        raise ProvisionError("--fleet DIR is required (or set VIGIL_FLEET)")
    return Fleet(Path(path).expanduser().resolve())


def cmd_init_ca(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    settings = FleetSettings(name=args.name or fleet.root.name, broker=args.broker, topic_prefix=args.prefix)
    if not is_topic_prefix(args.prefix):
        raise ProvisionError(f"--prefix {args.prefix!r} must be topic levels of letters, digits, _ or -")
    if has_control_chars(settings.name) or has_control_chars(args.broker):
        raise ProvisionError("--name and --broker must not contain control characters")
    return commands.init_ca(fleet, settings, args.days, encrypt=args.encrypt)


def cmd_add_node(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    values = {k: str(v) for k in COLUMNS if (v := getattr(args, k, None)) is not None}
    try:
        spec = parse_node(values)
    except ValueError as exc:
        raise ProvisionError(f"add-node: {exc}") from None
    return commands.provision_nodes(
        fleet, [spec], update=args.update, reissue=[spec.id] if args.reissue else []
    )


def cmd_from_inventory(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"cannot read {args.file}: {exc}") from None
    specs = parse_csv(text, str(args.file))
    return commands.provision_nodes(fleet, specs, update=True, reissue=args.reissue or [], skip_revoked=True)


def cmd_add_operator(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    return commands.add_operator(fleet, args.name, args.days, args.reissue, args.role)


def cmd_broker_config(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    if args.kind == "rabbitmq" and args.user:
        raise ProvisionError("--user is for Mosquitto; RabbitMQ runs as its own user")
    if args.kind == "rabbitmq" and args.persistence_dir:
        raise ProvisionError(
            "--persistence-dir is for Mosquitto; RabbitMQ keeps its queues in its data directory"
        )
    default_out = fleet.broker_dir if args.kind == "mosquitto" else fleet.root / "broker-rabbitmq"
    out = Path(args.out).expanduser().resolve() if args.out else default_out
    options = BrokerOptions(
        out=str(out),
        port=args.port,
        bind=args.bind,
        hosts=tuple(args.host or ()),
        install_dir=args.install_dir,
        user=args.user,
        kind=args.kind,
        persistence_dir=args.persistence_dir,
        nodes=args.nodes,
        outage_s=args.outage,
        node_rate=args.node_rate,
        message_bytes=args.message_bytes,
        cluster_nodes=tuple(args.cluster_node or ()),
    )
    return commands.broker_config(fleet, options)


def duration_s(text: str) -> int:
    """`3600`, `90m`, `1h`, `2d` → seconds (argparse type)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    factor = units.get(text[-1:])
    try:
        value = int(float(text[:-1] if factor else text) * (factor or 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 90m, 1h or 2d") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def cmd_revoke(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    return commands.revoke(fleet, args.name)


def cmd_list(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    rows = listing.listing(fleet)
    out = commands.Outcome()
    if args.json:
        out.say(json.dumps(rows, indent=2))
        return out
    out.say(f"{'KIND':<9} {'ID':<22} {'SITE':<24} {'SERIAL':<14} {'EXPIRES':<11} STATE")
    for row in rows:
        if row["kind"] not in ("node", "operator", "broker"):
            continue
        state = str(row["state"]) + (f" {row['revoked_at']}" if row["revoked_at"] else "")
        if row.get("role"):
            state += f", role {row['role']}"
        out.say(
            f"{row['kind']:<9} {row['id']!s:<22} {str(row['site'])[:24]:<24} {str(row['serial'])[:12]:<14} "
            f"{row['expires']!s:<11} {state}"
        )
        serials = row.get("serials")
        earlier = [s for s in serials if s["serial"] != row["serial"]] if isinstance(serials, list) else []
        for item in earlier:  # every certificate ever issued to the identity, and whether it still works
            when = f" {item['revoked_at']}" if item["revoked_at"] else ""
            out.say(
                f"{'':<9} {'  earlier':<22} {'':<24} {item['serial'][:12]:<14} {item['expires']:<11} "
                f"{item['state']}{when}"
            )
    for row in rows:
        if row["kind"] == "crl":
            out.say(
                f"CRL number {row['serial']}: {row['state']}, next update {row['expires']} (refresh before then)"
            )
        elif row["kind"] == "broker-crl":
            out.say(
                f"broker CRL {row['id']}: number {row['serial'] or '-'}, {row['state']}, next update "
                f"{row['expires'] or '-'}"
            )
        elif row["kind"] == "ca":
            out.say(f"CA valid until {row['expires']}")
    for warning in listing.warnings(rows):
        out.say(f"warning: {warning}")
    return out


def cmd_health(args: argparse.Namespace, fleet: Fleet) -> commands.Outcome:
    """For cron or monitoring: the CRLs the brokers read, the CA, certificates to renew; exit 1 on any warning."""
    rows = listing.listing(fleet)
    found = listing.warnings(rows)
    renew = [
        f"{r['kind']} {r['id']}: certificate {r['state']} ({r['expires']})"
        for r in rows
        if r["kind"] in ("node", "operator", "broker") and r["state"] in ("renew soon", "expired")
    ]
    out = commands.Outcome()
    for line in [*found, *renew]:
        out.say(f"warning: {line}")
    crls = [r for r in rows if r["kind"] in ("crl", "broker-crl")]
    out.say(
        f"health: {len(found) + len(renew)} warning(s); "
        + ", ".join(f"{r['id']} until {r['expires'] or '?'}" for r in crls)
    )
    out.failed = bool(found or renew)
    return out


def _fleet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fleet",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="fleet directory: CA, inventory, bundles (default $VIGIL_FLEET)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil-provision",
        description="Provision a Vigil fleet: a CA, one certificate and bundle per node, operator "
        "certificates, the Mosquitto configuration, revocation. Re-running a command changes nothing "
        "that is already right.",
    )
    _fleet_option(parser)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = sub.add_parser("init-ca", help="create the fleet CA and fleet.toml (never overwrites)")
    _fleet_option(p)
    p.add_argument(
        "--broker", required=True, metavar="mqtts://HOST[:PORT]", help="the broker nodes connect to"
    )
    p.add_argument("--name", help="fleet name (default: the directory name)")
    p.add_argument("--prefix", default="vigil", help="MQTT topic prefix (default vigil)")
    p.add_argument("--days", type=int, default=7300, help="CA validity in days (default 7300)")
    p.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt the CA key with a passphrase, from $VIGIL_CA_PASSPHRASE or asked on the terminal "
        "(never on the command line); every command that signs asks for it",
    )
    p.set_defaults(func=cmd_init_ca)

    p = sub.add_parser("add-node", help="issue a node certificate and write its bundle")
    _fleet_option(p)
    p.add_argument("id", help="node id: certificate CN, MQTT client id and topic level")
    p.add_argument("--site", default="", help="site name for people")
    p.add_argument("--lat", help="latitude (WGS84 degrees)")
    p.add_argument("--lon", help="longitude (WGS84 degrees)")
    p.add_argument("--alt", help="altitude in metres")
    p.add_argument(
        "--camera",
        help="camera-module-3 (default), camera-module-2, hq-camera, global-shutter, usb or rtsp://…",
    )
    p.add_argument("--modem", help="ec25, eg25, sim7600 or none (default)")
    p.add_argument("--apn", help="mobile network access point name")
    p.add_argument(
        "--modem-manager",
        dest="modem_manager",
        help="who manages the modem: agent (default; ModemManager kept off its ports) or modemmanager",
    )
    p.add_argument("--update", action="store_true", help="change the details of an existing node")
    p.add_argument(
        "--reissue", action="store_true", help="new key and certificate (lost, compromised or revoked)"
    )
    p.set_defaults(func=cmd_add_node)

    p = sub.add_parser(
        "from-inventory",
        help="add or update every node of a CSV sheet",
        description=f"CSV columns (header row; only id is required): {', '.join(COLUMNS)}. "
        "Every bad row is reported and nothing is written until the whole sheet is valid.",
    )
    _fleet_option(p)
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--reissue", action="append", metavar="ID", help="new key and certificate for this node")
    p.set_defaults(func=cmd_from_inventory)

    p = sub.add_parser(
        "add-operator",
        help="a back-office client certificate with a role (reads all nodes; sends the commands its role allows)",
        description="Roles: viewer (read only: ping, status, config/get; e.g. the ingest), operator (also "
        "config/set and snapshots), admin (also model and agent updates, modem reset, restart). The role is "
        "written into the certificate (nodes check it on every signed command) and into the broker ACL. "
        "Changing an operator's role issues a new certificate and revokes the earlier ones.",
    )
    _fleet_option(p)
    p.add_argument("name")
    p.add_argument(
        "--role",
        choices=ROLES,
        help="what the operator may do (default: the role it has; viewer for a new operator)",
    )
    p.add_argument("--days", type=int, help="validity in days (default from fleet.toml)")
    p.add_argument("--reissue", action="store_true", help="new key and certificate")
    p.set_defaults(func=cmd_add_operator)

    p = sub.add_parser(
        "broker-config",
        help="broker config (Mosquitto, or a RabbitMQ cluster), ACL or permissions, CRL and broker certificate",
        description="Write the broker's configuration for this fleet. Mosquitto: TLS listener, ACL, CRL, "
        "persistence and queue limits sized for a back-office outage. --kind rabbitmq: the same identities "
        "and permissions for a RabbitMQ cluster with quorum queues (replicated, fsynced acknowledgements).",
    )
    _fleet_option(p)
    p.add_argument(
        "--kind", choices=BROKER_KINDS, default="mosquitto", help="broker software (default mosquitto)"
    )
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    p.add_argument("--out", metavar="DIR", help="output directory (default FLEET/broker)")
    p.add_argument(
        "--host",
        action="append",
        metavar="NAME|IP",
        help="name the broker certificate is valid for (repeatable; default the host of fleet.toml's broker)",
    )
    p.add_argument("--bind", metavar="ADDR", help="listen on this address only")
    p.add_argument(
        "--install-dir",
        metavar="DIR",
        help="where the files will live on the broker host, e.g. /etc/mosquitto/vigil (default: --out)",
    )
    p.add_argument(
        "--user", help="user Mosquitto runs as (written as `user`; Mosquitto refuses root without it)"
    )
    p.add_argument(
        "--persistence-dir",
        metavar="DIR",
        help="Mosquitto run on its own: where it saves its state (Debian's main config already sets one)",
    )
    p.add_argument(
        "--outage",
        type=duration_s,
        default=OUTAGE_S,
        metavar="DURATION",
        help="back-office outage the broker must bridge without losing messages (default 1h)",
    )
    p.add_argument(
        "--nodes", type=int, metavar="N", help="planned number of nodes (default: those in the inventory)"
    )
    p.add_argument(
        "--node-rate",
        type=float,
        default=NODE_RATE,
        metavar="MSG/S",
        help=f"messages per second per node: events, thumbnails, telemetry (default {NODE_RATE:g})",
    )
    p.add_argument(
        "--message-bytes",
        type=int,
        default=MESSAGE_BYTES,
        metavar="BYTES",
        help=f"average message size (default {MESSAGE_BYTES})",
    )
    p.add_argument(
        "--cluster-node",
        action="append",
        metavar="NAME@HOST",
        help="RabbitMQ: an Erlang node of the cluster, e.g. rabbit@broker-1 (repeat for each)",
    )
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser("revoke", help="revoke a node's (or operator's) certificates: CRL and ACL")
    _fleet_option(p)
    p.add_argument("name", metavar="NODE")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser(
        "list", help="nodes, operators, every certificate and its state, CRL expiry (with warnings)"
    )
    _fleet_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "health",
        help="warn before a CRL a broker reads expires (then it refuses every client), certificates to "
        "renew; exit 1 on any warning (for cron)",
    )
    _fleet_option(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser(
        "install",
        help="install a node bundle on this machine, or into --root DIR (an SD card)",
        description="Run the node installer for FLEET/nodes/NODE (same as the bundle's install.sh).",
    )
    _fleet_option(p)
    p.add_argument("node")
    p.add_argument("--root", metavar="DIR", help="install into this directory tree instead of /")
    p.add_argument("--agent", metavar="WHEEL|DIR|REQ", help="what to pip-install into the node's venv")
    p.add_argument("--skip-apt", action="store_true")
    release_cli.add_offline_arguments(p)
    p.set_defaults(func=None)
    release_cli.register(sub, _fleet_option)
    return parser


def _install(args: argparse.Namespace, fleet: Fleet) -> int:
    from provisioning import install

    if args.offline:
        return release_cli.install_offline(args, fleet)
    bundle = fleet.bundle_dir(args.node)
    if not bundle.is_dir():
        raise ProvisionError(f"no bundle for node {args.node!r} in {fleet.nodes_dir}: run add-node first")
    argv = ["--bundle", str(bundle)]
    if args.root:
        argv += ["--root", args.root]
    if args.agent:
        argv += ["--agent", args.agent]
    if args.skip_apt:
        argv.append("--skip-apt")
    return install.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fleet = _fleet(args)
        if args.func is None:
            return _install(args, fleet)
        # Serialise commands on one fleet; before init-ca there is nothing to protect (and nothing is created).
        guard = locked(fleet.lock_file) if fleet.ca_dir.is_dir() else contextlib.nullcontext()
        with guard:
            outcome = args.func(args, fleet)
    except ProvisionError as exc:
        print(f"vigil-provision: error: {exc}".replace("\n", "\n  "), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    for line in outcome.lines:
        print(line)
    return EXIT_ERROR if outcome.failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
