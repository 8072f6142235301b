"""The operator's fleet directory: where the CA, the inventory and the issued bundles live.

FLEET/fleet.toml          settings (broker URL, topic prefix, validity periods, agent defaults)
FLEET/ca/ca.crt, ca.key   the fleet CA (key 0600); ca/crl.pem the revocation list
FLEET/inventory.toml      every certificate issued (serial, expiry, revocation) and node details
FLEET/nodes/ID/           one bundle per node, copied to the Pi and installed there
FLEET/operators/NAME/     back-office client certificates
FLEET/broker/             Mosquitto configuration (default output of broker-config)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioning.errors import ProvisionError
from provisioning.names import has_control_chars, is_host, is_topic_prefix

FLEET_FILE = "fleet.toml"


def parse_broker_url(url: str, origin: str) -> tuple[str, int]:
    """A fleet broker must be mqtts:// (node identity *is* the TLS client certificate)."""
    parts = urlsplit(url)  # (which silently drops tabs and newlines: the host is checked on its own)
    if parts.scheme != "mqtts" or not parts.hostname or has_control_chars(url) or not is_host(parts.hostname):
        raise ProvisionError(f"{origin}: broker {url!r} must look like mqtts://host[:port] (mutual TLS)")
    try:
        port = parts.port or 8883
    except ValueError:
        raise ProvisionError(f"{origin}: broker {url!r} has an invalid port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ProvisionError(f"{origin}: broker {url!r} must be just mqtts://host[:port]")
    return parts.hostname, port


@dataclass(frozen=True)
class FleetSettings:
    """fleet.toml: chosen at init-ca, editable later (re-run add-node/from-inventory to apply)."""

    name: str
    broker: str
    topic_prefix: str = "vigil"
    node_days: int = 730
    operator_days: int = 365
    server_days: int = 825
    renew_before_days: int = 30
    crl_days: int = 365
    agent: dict[str, Any] = field(default_factory=dict)

    @property
    def broker_host(self) -> str:
        return parse_broker_url(self.broker, FLEET_FILE)[0]

    @property
    def broker_port(self) -> int:
        return parse_broker_url(self.broker, FLEET_FILE)[1]

    def render(self) -> str:
        """The initial fleet.toml, with comments, written once by init-ca."""
        return (
            "# Vigil fleet settings, read by every vigil-provision command.\n"
            "# After editing, re-run `vigil-provision from-inventory` (or add-node) to update the bundles.\n"
            f"name = {_toml_str(self.name)}\n"
            "# The broker every node connects to (mutual TLS); its host name goes into the broker certificate.\n"
            f"broker = {_toml_str(self.broker)}\n"
            f"topic_prefix = {_toml_str(self.topic_prefix)}\n"
            "# Certificate lifetimes in days; add-node re-issues a node certificate within renew_before_days\n"
            "# of its expiry. The CRL must be refreshed (any revoke or broker-config does it) before it\n"
            "# expires, or the broker refuses every client.\n"
            f"node_days = {self.node_days}\n"
            f"operator_days = {self.operator_days}\n"
            f"server_days = {self.server_days}\n"
            f"renew_before_days = {self.renew_before_days}\n"
            f"crl_days = {self.crl_days}\n"
            "\n"
            "# Agent settings shared by every node, merged under each node's config.toml, e.g.\n"
            "# [agent.detect]\n"
            '# model = "yolox-nano"\n'
            "# [agent.uplink]\n"
            "# max_bytes_per_day = 50_000_000\n"
        )


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_INT_FIELDS = ("node_days", "operator_days", "server_days", "renew_before_days", "crl_days")


def load_settings(path: Path) -> FleetSettings:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvisionError(f"{path} not found: run `vigil-provision --fleet DIR init-ca` first") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"{path}: cannot read fleet settings: {exc}") from None
    known = {"name", "broker", "topic_prefix", "agent", *_INT_FIELDS}
    for key in data:
        if key not in known:
            raise ProvisionError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
    for key in ("name", "broker"):
        if not isinstance(data.get(key), str) or not data[key] or has_control_chars(data[key]):
            raise ProvisionError(f"{path}: {key} must be a non-empty string without control characters")
    parse_broker_url(data["broker"], str(path))
    prefix = data.get("topic_prefix", "vigil")
    if not is_topic_prefix(prefix):
        raise ProvisionError(
            f"{path}: topic_prefix {prefix!r} must be topic levels of letters, digits, _ or -"
        )
    for key in _INT_FIELDS:
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ProvisionError(f"{path}: {key} must be a positive number of days")
    agent = data.get("agent", {})
    if not isinstance(agent, dict):
        raise ProvisionError(f"{path}: [agent] must be a table of agent settings")
    return FleetSettings(
        name=data["name"],
        broker=data["broker"],
        topic_prefix=prefix,
        agent=agent,
        **{k: data[k] for k in _INT_FIELDS if k in data},
    )


class Fleet:
    """Paths inside one fleet directory, and its settings."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings_file = root / FLEET_FILE
        self.ca_dir = root / "ca"
        self.ca_cert = self.ca_dir / "ca.crt"
        self.ca_key = self.ca_dir / "ca.key"
        self.crl = self.ca_dir / "crl.pem"
        self.inventory_file = root / "inventory.toml"
        self.nodes_dir = root / "nodes"
        self.operators_dir = root / "operators"
        self.broker_dir = root / "broker"
        self.lock_file = self.ca_dir / ".lock"

    def exists(self) -> bool:
        return self.settings_file.exists() or self.ca_key.exists() or self.ca_cert.exists()

    def settings(self) -> FleetSettings:
        if not self.ca_cert.exists() or not self.ca_key.exists():
            missing = self.ca_key if self.ca_cert.exists() else self.ca_cert
            raise ProvisionError(
                f"no fleet CA in {self.root} (missing {missing}): "
                f"run `vigil-provision --fleet {self.root} init-ca --broker mqtts://HOST:8883` first"
            )
        return load_settings(self.settings_file)

    def bundle_dir(self, node_id: str) -> Path:
        return self.nodes_dir / node_id

    def operator_dir(self, name: str) -> Path:
        return self.operators_dir / name
