"""RabbitMQ configuration for a fleet that outgrows one Mosquitto: the same identities, topics and
permissions, on a cluster whose acknowledgements are replicated.

- MQTT plugin on one TLS listener, `verify_peer` + `fail_if_no_peer_cert`, the certificate CN as the
  user (`mqtt.ssl_cert_login`, `ssl_cert_login_from = common_name`), no anonymous access, no plain
  AMQP or MQTT listener;
- the fleet CRL checked in the TLS handshake (`crl_check` with a hashed CRL directory, in
  advanced.config because rabbitmq.conf cannot express it);
- one passwordless user per node and operator (definitions.json, imported at boot) with resource
  permissions on its own MQTT session queues only and topic permissions on `amq.topic` equivalent to
  the Mosquitto ACL (RabbitMQ turns MQTT `/` into `.` and `.` into `/`);
- durable MQTT sessions in quorum queues (`mqtt.durable_queue_type = quorum`; newer RabbitMQ calls
  it `mqtt.queue_type`): a QoS 1 PUBACK to a node then means the message is on the disks of a
  majority of the cluster's brokers (Raft, fsync), for every persistent session it is routed to;
- a prefetch that lets the ingest keep a full window in flight, and session queues that outlive a
  back-office outage (`mqtt.subscription_ttl`).

Revoking an identity removes its user from definitions.json and puts its serials in the CRL; a
running cluster needs `rabbitmqctl delete_user NAME` too (definitions are imported, not synced) —
`revoked.txt` lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct

from provisioning.broker import BrokerOptions, Sizing, command_topics, duration, human_bytes, operator_role
from provisioning.errors import ProvisionError
from provisioning.fleet import FleetSettings
from provisioning.inventory import Inventory

CONFIG_NAME = "rabbitmq.conf"
ADVANCED_NAME = "advanced.config"
DEFINITIONS_NAME = "definitions.json"
PLUGINS_NAME = "enabled_plugins"
REVOKED_NAME = "revoked.txt"
CRL_DIR = "crls"
PREFETCH = 500  # the ingest's window: messages in flight to it, unacknowledged until committed
SESSION_TTL_MS = 14 * 86400 * 1000
CLUSTER_NODE_RE = re.compile(r"^[A-Za-z0-9_-]+@[A-Za-z0-9.-]+$")


def amqp_topic(mqtt_topic: str) -> str:
    """MQTT topic → AMQP routing key as RabbitMQ's MQTT plugin maps them ('/' ↔ '.')."""
    return mqtt_topic.translate(str.maketrans("/.", "./"))


def _rx(text: str) -> str:
    """A literal for PCRE (RabbitMQ's permission patterns)."""
    return re.sub(r"([\\^$.|?*+()\[\]{}/-])", r"\\\1", text)


def topic_permissions(
    settings: FleetSettings, name: str, operator: bool, role: str | None = None
) -> dict[str, str]:
    """The Mosquitto ACL for one identity, as RabbitMQ topic permissions on amq.topic. An operator
    reads every node and writes the commands its role allows (all of them for admin)."""
    prefix = _rx(amqp_topic(settings.topic_prefix))
    if operator:
        topics = command_topics(operator_role(role))
        if topics == ["#"]:
            return {"write": rf"^{prefix}\.[^.]+\.cmd\.", "read": rf"^{prefix}\."}
        names = "|".join(_rx(amqp_topic(t)) for t in topics)
        return {"write": rf"^{prefix}\.[^.]+\.cmd\.({names})$", "read": rf"^{prefix}\."}
    node = _rx(amqp_topic(name))
    return {"write": rf"^{prefix}\.{node}\.", "read": rf"^{prefix}\.{node}\.cmd\."}


def resource_permissions(name: str) -> dict[str, str]:
    """Only its own MQTT session queues (mqtt-subscription-<client id>qos0/qos1) and amq.topic: the
    client id must be the identity's name, as Mosquitto forces with use_username_as_clientid."""
    queues = rf"mqtt-subscription-{_rx(name)}qos[01]"
    return {
        "configure": rf"^{queues}$",
        "write": rf"^(amq\.topic|{queues})$",
        "read": rf"^(amq\.topic|{queues})$",
    }


def definitions(settings: FleetSettings, inventory: Inventory) -> dict[str, object]:
    identities: list[tuple[str, bool, str | None]] = [
        (n, False, None) for n, e in sorted(inventory.nodes.items()) if not e.cert.is_revoked
    ]
    identities += [(n, True, i.role) for n, i in sorted(inventory.operators.items()) if not i.is_revoked]
    return {
        "users": [
            {
                "name": name,
                "password_hash": "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
            for name, _, _ in identities
        ],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": name, "vhost": "/", **resource_permissions(name)} for name, _, _ in identities],
        "topic_permissions": [
            {
                "user": name,
                "vhost": "/",
                "exchange": "amq.topic",
                **topic_permissions(settings, name, operator, role),
            }
            for name, operator, role in identities
        ],
    }


def revoked_names(inventory: Inventory) -> list[str]:
    return sorted(
        [n for n, e in inventory.nodes.items() if e.cert.is_revoked]
        + [n for n, i in inventory.operators.items() if i.is_revoked]
    )


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return _der(0x06, bytes(out))


def name_hash(name: object) -> str:
    """OpenSSL's X509_NAME_hash (`openssl x509 -hash`) of a cryptography x509.Name: the file name
    under which Erlang's ssl_crl_hash_dir looks for the CRL of that issuer."""
    from cryptography import x509

    assert isinstance(name, x509.Name)
    canon = b""
    for rdn in name.rdns:
        entries = b""
        for attr in rdn:
            value = " ".join(str(attr.value).split()).encode("utf-8")
            value = bytes(c + 32 if 65 <= c <= 90 else c for c in value)  # ASCII lower case, like OpenSSL
            entries += _der(0x30, _oid(attr.oid.dotted_string) + _der(0x0C, value))
        canon += _der(0x31, entries)
    (value,) = struct.unpack("<I", hashlib.sha1(canon).digest()[:4])  # OpenSSL's choice of hash, not ours
    return f"{value:08x}"


def crl_file_name(ca_pem: bytes) -> str:
    from cryptography import x509

    return f"{name_hash(x509.load_pem_x509_certificate(ca_pem).subject)}.r0"


def render_config(settings: FleetSettings, options: BrokerOptions, sizing: Sizing) -> str:
    d = options.files_dir.rstrip("/")
    listen = f"{options.bind}:{options.port}" if options.bind else str(options.port)
    lines = [
        f"# Vigil fleet {settings.name!r}: RabbitMQ configuration (generated by vigil-provision broker-config",
        "# --kind rabbitmq; do not edit, re-run it). The same file on every broker of the cluster, e.g. as",
        "# /etc/rabbitmq/conf.d/10-vigil.conf, with advanced.config in /etc/rabbitmq/ (TLS and the CRL) and",
        "# enabled_plugins in /etc/rabbitmq/. Nodes and operators authenticate with client certificates only.",
        "listeners.tcp = none",
        "mqtt.listeners.tcp = none",
        f"mqtt.listeners.ssl.default = {listen}",
        "ssl_cert_login_from = common_name",
        "mqtt.ssl_cert_login = true",
        "mqtt.allow_anonymous = false",
        "mqtt.vhost = /",
        "mqtt.exchange = amq.topic",
        f"load_definitions = {d}/{DEFINITIONS_NAME}",
        "",
        "# -- Keeping what was acknowledged ------------------------------------------------------------",
        "# Persistent MQTT sessions (the ingest's, the nodes' command subscriptions) live in quorum queues:",
        "# replicated by Raft to the cluster's brokers and fsynced before a publisher is confirmed. A node's",
        "# message is acknowledged (PUBACK) only when a majority holds it on disk, so a broker that crashes,",
        "# or loses power, loses nothing acknowledged; the cluster works on while a majority is up.",
        "# (RabbitMQ 3.13+ names this setting mqtt.queue_type.)",
        "mqtt.durable_queue_type = quorum",
        "# The ingest acknowledges after its database commit: let it keep a full window in flight.",
        f"mqtt.prefetch = {PREFETCH}",
        "# A persistent session (and its queue) unused for this long is deleted: it must outlive a back-office",
        "# outage. The ingest's own session expiry (MQTT 5) does not apply here: RabbitMQ 3.10 speaks MQTT 3.1.1.",
        f"mqtt.subscription_ttl = {SESSION_TTL_MS}",
        "",
        "# -- How long the back office may be away ---------------------------------------------------------",
        f"# Sized for an outage of {duration(sizing.outage_s)}: {sizing.describe()}:",
        f"# give every broker {human_bytes(sizing.bytes)} of disk for it (each holds a copy of each session queue)",
        "# above the floor below. Queues have no length limit and nothing is dropped: when a broker's free",
        "# disk falls to the floor it stops accepting messages (disk alarm) and the nodes keep their events",
        "# in their own spools until it has room again.",
        "disk_free_limit.absolute = 2GB",
        "vm_memory_high_watermark.relative = 0.6",
    ]
    if options.cluster_nodes:
        for name in options.cluster_nodes:
            if not CLUSTER_NODE_RE.match(name):
                raise ProvisionError(
                    f"--cluster-node {name!r} must be an Erlang node name like rabbit@broker-1"
                )
        lines += [
            "",
            "# -- The cluster (every broker needs the same Erlang cookie in /var/lib/rabbitmq/.erlang.cookie) --",
            "cluster_formation.peer_discovery_backend = classic_config",
            *(
                f"cluster_formation.classic_config.nodes.{i} = {n}"
                for i, n in enumerate(options.cluster_nodes, 1)
            ),
            "# A broker cut off from the majority stops serving rather than diverging.",
            "cluster_partition_handling = pause_minority",
        ]
    return "\n".join(lines) + "\n"


def render_advanced(options: BrokerOptions) -> str:
    d = options.files_dir.rstrip("/")
    return (
        "%% Vigil fleet: TLS for RabbitMQ's listeners (generated by vigil-provision broker-config --kind rabbitmq).\n"
        "%% Here rather than in rabbitmq.conf because the CRL check cannot be written there. The CRL lives in\n"
        f"%% {d}/{CRL_DIR}/ under OpenSSL's hash of the CA's name; refresh it after `vigil-provision revoke`\n"
        "%% (broker-config rewrites it) and restart the brokers one by one.\n"
        "[\n"
        " {rabbit, [\n"
        "  {ssl_options, [\n"
        f'    {{cacertfile, "{d}/ca.crt"}},\n'
        f'    {{certfile, "{d}/server.crt"}},\n'
        f'    {{keyfile, "{d}/server.key"}},\n'
        "    {verify, verify_peer},\n"
        "    {fail_if_no_peer_cert, true},\n"
        "    {versions, ['tlsv1.3', 'tlsv1.2']},\n"
        "    {crl_check, peer},\n"
        f'    {{crl_cache, {{ssl_crl_hash_dir, {{internal, [{{dir, "{d}/{CRL_DIR}"}}]}}}}}}\n'
        "  ]}\n"
        " ]}\n"
        "].\n"
    )


def render_revoked(inventory: Inventory) -> str:
    names = revoked_names(inventory)
    head = (
        "# Revoked identities (vigil-provision revoke). Their certificates are in the CRL and they have no\n"
        "# user in definitions.json; on a running cluster also remove the users once:\n"
    )
    return head + "".join(f"rabbitmqctl delete_user {name}\n" for name in names)


def files(
    settings: FleetSettings,
    inventory: Inventory,
    options: BrokerOptions,
    sizing: Sizing,
    *,
    ca_pem: bytes,
    crl: bytes,
) -> dict[str, bytes]:
    """Every RabbitMQ-specific file, by name relative to the output directory."""
    return {
        CONFIG_NAME: render_config(settings, options, sizing).encode(),
        ADVANCED_NAME: render_advanced(options).encode(),
        DEFINITIONS_NAME: (json.dumps(definitions(settings, inventory), indent=2) + "\n").encode(),
        PLUGINS_NAME: b"[rabbitmq_mqtt].\n",
        REVOKED_NAME: render_revoked(inventory).encode(),
        f"{CRL_DIR}/{crl_file_name(ca_pem)}": crl,
    }
