"""Mosquitto configuration for a fleet: one mutual-TLS listener, identities from certificates, an
ACL file of pattern rules and a CRL.

With `use_identity_as_username` the certificate CN (node id or operator name) is the MQTT username,
so `%u` in a pattern is the node's own topic level and no password exists to leak. The client id
is forced to the same name (`use_username_as_clientid`) so one node cannot take over another's
session by connecting with its client id. Revoked identities are refused by the CRL at the TLS
handshake and, in case an old CRL is still deployed, denied every topic in the ACL.

What Mosquitto's PUBACK is worth (FIELD-NOTES): it acknowledges a message once it is in memory. With
`persistence` it writes everything (retained messages, persistent sessions and the messages queued
for them) to one file on a clean shutdown and every `autosave_interval`, so a clean restart keeps
what the back office has not fetched yet and a crash loses what arrived since the last save. The
queue of an offline back office is bounded (`max_queued_messages`/`max_queued_bytes`, sized here
from the fleet, the message rate and the outage to survive); past the bound Mosquitto drops new
messages silently, which the back office then sees as seq gaps. `--kind rabbitmq` writes the
configuration for a RabbitMQ cluster instead (provisioning.rabbitmq), whose acknowledgement means
"on the disks of a majority of brokers".
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError
from provisioning.fleet import FleetSettings
from provisioning.inventory import Inventory

CONFIG_NAME = "mosquitto.conf"
ACL_NAME = "acl"
KINDS = ("mosquitto", "rabbitmq")
# A busy street node (bench/fleet.py, street trace): 1.43 messages/s of events, thumbnails and telemetry,
# 115 MB a day, i.e. ~930 bytes per message on average. Rounded up.
NODE_RATE = 1.5
MESSAGE_BYTES = 1000
OUTAGE_S = 3600
HEADROOM = 1.25  # bursts: nodes draining their spools after an outage of their own
MOSQUITTO_OVERHEAD = 200  # bytes Mosquitto keeps per queued message besides its payload (approximately)
AUTOSAVE_S = 60
SESSION_EXPIRY = "14d"


@dataclass(frozen=True)
class BrokerOptions:
    """broker-config's options, recorded in the inventory so `revoke` can regenerate the same output."""

    out: str
    port: int = 8883
    bind: str | None = None
    hosts: tuple[str, ...] = ()
    install_dir: str | None = None
    user: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "mosquitto"
    persistence_dir: str | None = None  # Mosquitto run on its own; Debian's main config already sets one
    nodes: int | None = None  # planned fleet size; default: the nodes in the inventory
    outage_s: int = OUTAGE_S  # back-office outage the broker must bridge
    node_rate: float = NODE_RATE
    message_bytes: int = MESSAGE_BYTES
    cluster_nodes: tuple[str, ...] = ()  # RabbitMQ: Erlang node names of the cluster (rabbit@host)

    @property
    def files_dir(self) -> str:
        """Where the broker will read the files (the output directory unless told otherwise)."""
        return self.install_dir or str(Path(self.out).resolve())

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v not in (None, ())
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrokerOptions:
        return cls(
            out=str(data["out"]),
            port=int(data.get("port", 8883)),
            bind=data.get("bind"),
            hosts=tuple(data.get("hosts", ())),
            install_dir=data.get("install_dir"),
            user=data.get("user"),
            extra=tuple(data.get("extra", ())),
            kind=str(data.get("kind", "mosquitto")),
            persistence_dir=data.get("persistence_dir"),
            nodes=int(data["nodes"]) if data.get("nodes") is not None else None,
            outage_s=int(data.get("outage_s", OUTAGE_S)),
            node_rate=float(data.get("node_rate", NODE_RATE)),
            message_bytes=int(data.get("message_bytes", MESSAGE_BYTES)),
            cluster_nodes=tuple(data.get("cluster_nodes", ())),
        )


@dataclass(frozen=True)
class Sizing:
    """What the broker must hold while the back office is away: nodes × rate × outage, plus headroom."""

    nodes: int
    outage_s: int
    node_rate: float
    message_bytes: int

    @classmethod
    def of(cls, options: BrokerOptions, inventory: Inventory) -> Sizing:
        nodes = options.nodes if options.nodes is not None else max(1, len(inventory.nodes))
        return cls(nodes, options.outage_s, options.node_rate, options.message_bytes)

    @property
    def messages(self) -> int:
        return math.ceil(self.nodes * self.node_rate * self.outage_s * HEADROOM)

    @property
    def bytes(self) -> int:
        return self.messages * self.message_bytes

    def describe(self) -> str:
        return (
            f"{self.nodes} node(s) × {self.node_rate:g} messages/s × {duration(self.outage_s)} × {HEADROOM:g} headroom "
            f"= {self.messages:,} messages × {self.message_bytes} bytes = {human_bytes(self.bytes)}"
        )


def duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def split_hosts(hosts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Server certificate names: DNS names and IP addresses."""
    dns, ips = [], []
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.append(host)
    return dns, ips


def render_config(settings: FleetSettings, options: BrokerOptions, sizing: Sizing) -> str:
    d = options.files_dir.rstrip("/")
    memory = sizing.bytes + sizing.messages * MOSQUITTO_OVERHEAD
    if options.persistence_dir:
        location = [f"persistence_location {options.persistence_dir.rstrip('/')}/"]
    else:
        location = [
            "# persistence_location: Debian's /etc/mosquitto/mosquitto.conf sets /var/lib/mosquitto/ (Mosquitto",
            "# refuses a second one); run on its own, give broker-config --persistence-dir DIR.",
        ]
    lines = [
        f"# Vigil fleet {settings.name!r}: Mosquitto configuration (generated by vigil-provision broker-config;",
        "# do not edit, re-run it). Nodes and operators authenticate with client certificates only.",
        "# The CRL is read when Mosquitto starts: restart it after `vigil-provision revoke`.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {d}/{ACL_NAME}",
        "max_packet_size 1048576",
        "",
        "# -- Keeping what was acknowledged ------------------------------------------------------------",
        "# Mosquitto acknowledges a node's message (PUBACK) once it holds it in memory, and the node then",
        "# deletes it from its spool. Messages for the back office's persistent session (the ingest) wait",
        "# here while the ingest is away. `persistence` writes them, with retained messages and sessions,",
        "# to mosquitto.db on every clean shutdown and every autosave_interval seconds:",
        "#  - a clean restart (systemctl restart mosquitto) keeps everything;",
        f"#  - a crash or power cut loses what arrived in the last {AUTOSAVE_S} s and was not yet fetched by the",
        "#    ingest. With the ingest connected that is almost nothing (it stores within a second); it matters",
        "#    during a back-office outage. Each save rewrites the whole file: a bigger queue costs more I/O.",
        "# For acknowledgements that mean 'on disk on a majority of brokers': broker-config --kind rabbitmq.",
        "persistence true",
        *location,
        f"autosave_interval {AUTOSAVE_S}",
        "",
        "# -- How long the back office may be away ---------------------------------------------------------",
        f"# Sized for a back-office outage of {duration(sizing.outage_s)}: {sizing.describe()}.",
        f"# Mosquitto keeps this queue in memory: about {human_bytes(memory)} of RAM at the limit. Past either",
        "# bound it drops new messages for the absent session silently (the default is 1000 messages): the",
        "# ingest then reports them as seq gaps, but they are gone. Re-run broker-config as the fleet grows",
        "# (--nodes N for the planned size, --outage DURATION, --node-rate, --message-bytes).",
        f"max_queued_messages {sizing.messages}",
        f"max_queued_bytes {sizing.bytes}",
        "# A persistent session unused for this long is deleted with its queue (the ingest's session expiry).",
        f"persistent_client_expiration {SESSION_EXPIRY}",
    ]
    if options.user:
        lines.append(f"user {options.user}")
    lines += [
        "",
        f"listener {options.port}{' ' + options.bind if options.bind else ''}",
        f"cafile {d}/ca.crt",
        f"certfile {d}/server.crt",
        f"keyfile {d}/server.key",
        f"crlfile {d}/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
        *options.extra,
    ]
    return "\n".join(lines) + "\n"


def render_acl(settings: FleetSettings, inventory: Inventory) -> str:
    p = settings.topic_prefix
    lines = [
        f"# Vigil fleet {settings.name!r}: broker ACL (generated by vigil-provision; do not edit, re-run it).",
        "# Usernames are certificate CNs: node ids and operator names.",
        "",
        "# Operators' command rights follow their role (vigil-provision add-operator --role); nodes check",
        "# the role again in every signed command.",
        "",
        f"# Nodes publish only under {p}/<node>/ (events, thumbs/<id>, status, telemetry, cmd_result)",
        f"# and receive only their own commands on {p}/<node>/cmd/#.",
        f"pattern write {p}/%u/#",
        f"pattern read {p}/%u/cmd/#",
    ]
    for name, issued in sorted(inventory.operators.items()):
        if issued.is_revoked:
            continue
        role = operator_role(issued.role)
        lines += [
            "",
            f"# operator {name} ({role}{'' if issued.role else ', issued before roles'}): reads every node, "
            + ("sends every command" if role == "admin" else f"sends only what a {role} may"),
            f"user {name}",
            f"topic read {p}/#",
            "topic read $SYS/#",
            *(f"topic write {p}/+/cmd/{topic}" for topic in command_topics(role)),
        ]
    revoked = sorted(
        [n for n, e in inventory.nodes.items() if e.cert.is_revoked]
        + [n for n, i in inventory.operators.items() if i.is_revoked]
    )
    for name in revoked:
        lines += [
            "",
            f"# {name} is revoked (the CRL refuses it; this denies it even with a stale CRL)",
            f"user {name}",
            "topic deny #",
        ]
    return "\n".join(lines) + "\n"


def operator_role(recorded: str | None) -> str:
    """An operator issued before roles existed gets the broker rights of a viewer: its certificate
    carries no role, so no node would obey its signature for anything more."""
    return recorded or "viewer"


def command_topics(role: str) -> list[str]:
    """The command topics (below {prefix}/+/cmd/) a role may publish: all of them for admin (so a
    command added later, e.g. agent/update, is admin-only without a new ACL), else the commands whose
    declared role it covers (agent.control.commands)."""
    if role == "admin":
        return ["#"]
    from agent.control.commands import commands_for

    return commands_for(role)


def render_files(
    settings: FleetSettings, inventory: Inventory, options: BrokerOptions, *, ca_pem: bytes, crl: bytes
) -> dict[str, bytes]:
    """The broker-specific files of one output directory (name relative to it → content); the CA, CRL
    and server certificate are written beside them by the broker-config command."""
    if options.kind not in KINDS:
        raise ProvisionError(f"--kind {options.kind!r} is not one of {', '.join(KINDS)}")
    for label, value in (
        ("--outage", options.outage_s),
        ("--node-rate", options.node_rate),
        ("--message-bytes", options.message_bytes),
    ):
        if value <= 0:
            raise ProvisionError(f"{label} must be positive")
    sizing = Sizing.of(options, inventory)
    if options.kind == "rabbitmq":
        from provisioning import rabbitmq

        return rabbitmq.files(settings, inventory, options, sizing, ca_pem=ca_pem, crl=crl)
    return {
        CONFIG_NAME: render_config(settings, options, sizing).encode(),
        ACL_NAME: render_acl(settings, inventory).encode(),
    }


def start_hint(options: BrokerOptions, inventory: Inventory) -> list[str]:
    """What broker-config tells the operator after writing the files."""
    sizing = Sizing.of(options, inventory)
    folder = Path(options.files_dir)
    if options.kind == "rabbitmq":
        return [
            f"sized for a back-office outage of {duration(sizing.outage_s)}: {sizing.describe()} on each broker's disk",
            f"install: {folder}/rabbitmq.conf as /etc/rabbitmq/conf.d/10-vigil.conf, advanced.config and "
            "enabled_plugins in /etc/rabbitmq/, the same Erlang cookie on every broker; see docs/deploying.md",
        ]
    return [
        f"sized for a back-office outage of {duration(sizing.outage_s)}: {sizing.describe()} "
        f"(held in Mosquitto's memory)",
        f"start it with: mosquitto -c {folder / CONFIG_NAME}",
    ]
