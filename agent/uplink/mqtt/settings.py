"""What the publisher is told, checked once and frozen: a bad URL or an unreadable certificate is a
clear error at start, not a surprise on the first reconnect."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from agent.config.schema import UplinkConfig
from agent.urls import hide_userinfo

log = logging.getLogger(__name__)

HISTORICAL_AFTER_S = 10.0  # records older than this when sent are flagged `historical`


class UplinkError(Exception):
    """The broker settings cannot work (bad URL, unreadable certificate); a user-facing message."""


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        field: str = "broker URL",
        credentials: str = "put MQTT credentials in uplink.username / uplink.password_file",
    ) -> BrokerUrl:
        """`mqtt[s]://host[:port]` and nothing else; `field` names the setting in messages (the back
        office says `--broker`), `credentials` where credentials go instead of the URL."""
        shown = hide_userinfo(url)
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise UplinkError(f"{field} {shown!r} must look like mqtt://host:port or mqtts://host:port")
        if parts.username or parts.password:
            raise UplinkError(f"{credentials}, not in the {field}")
        if parts.path not in ("", "/") or parts.query:
            raise UplinkError(f"{field} {shown!r} must be just mqtt[s]://host:port (no path or query)")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise UplinkError(f"{field} {shown!r} has an invalid port") from None
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class PublisherSettings:
    """Everything one publisher needs, validated; `base` is the node's topic root."""

    broker: BrokerUrl
    node_id: str
    topic_prefix: str = "vigil"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = 30
    session_expiry_s: int = 3600  # 0: a clean session (nothing takes commands on this node)
    inflight: int = 20
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    backlog_share: float = 0.25
    max_bytes_per_s: float | None = None
    max_bytes_per_day: int | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True  # off only behind the local link-profile proxy (the chain is still verified)
    historical_after_s: float = HISTORICAL_AFTER_S

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.node_id}"

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    @classmethod
    def from_config(
        cls,
        cfg: UplinkConfig,
        node_id: str,
        *,
        broker: BrokerUrl | None = None,
        check_hostname: bool = True,
        takes_commands: bool = True,
    ) -> PublisherSettings:
        """Check the files and read the password now; `takes_commands=False` asks for a clean
        session (a kept one would go on receiving, and holding, commands nothing answers)."""
        tls = cfg.tls
        for label, path in (
            ("ca_file", tls.ca_file),
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
        ):
            if path is not None and not Path(path).is_file():
                raise UplinkError(f"uplink.tls.{label} {path} does not exist")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise UplinkError("uplink.tls.cert_file and uplink.tls.key_file go together")
        broker = broker or BrokerUrl.parse(cfg.broker)
        if not broker.tls and (tls.cert_file or tls.ca_file):
            log.warning("TLS files are configured but the broker URL is mqtt:// (plain TCP); use mqtts://")
        password = cfg.password
        if cfg.password_file is not None:
            try:
                password = cfg.password_file.read_text().strip()
            except OSError as exc:
                raise UplinkError(f"cannot read uplink.password_file {cfg.password_file}: {exc}") from None
        return cls(
            broker=broker,
            node_id=node_id,
            topic_prefix=cfg.topic_prefix,
            protocol=cfg.protocol,
            keepalive_s=cfg.keepalive_s,
            session_expiry_s=cfg.session_expiry_s if takes_commands else 0,
            inflight=cfg.inflight,
            reconnect_min_s=cfg.reconnect_min_s,
            reconnect_max_s=cfg.reconnect_max_s,
            backlog_share=cfg.backlog_share,
            max_bytes_per_s=cfg.max_bytes_per_s,
            max_bytes_per_day=cfg.max_bytes_per_day,
            username=cfg.username,
            password=password,
            ca_file=tls.ca_file,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            check_hostname=check_hostname,
        )
