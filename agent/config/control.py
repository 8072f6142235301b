"""Config of the control plane (`[control]`), telemetry (`[telemetry]`), camera health (`[health]`) and
the local status page (`[http]`).

The status page is bound to the loopback interface unless configured otherwise; anything reachable
from another machine needs a token, because the page shows the camera's view.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import Section

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
_HOST_PORT = re.compile(r"(?:[a-z0-9][a-z0-9.-]*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def parse_listen(text: str) -> tuple[str, int] | None:
    """`[ADDR:]PORT` → (host, port); "" or "off" → None. Raises ValueError with a readable reason."""
    text = text.strip()
    if text in ("", "off"):
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} is not [ADDR:]PORT (e.g. 8080, 127.0.0.1:8080, 0.0.0.0:8080)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


class HttpConfig(Section):
    listen: str = Field(
        default="",
        description="Status page address [ADDR:]PORT (port 0: any free port). Empty: off, except "
        "`agent --simulate`, which serves it on a free loopback port; off: never. An address other than "
        "loopback needs `token`.",
    )
    token: str | None = Field(
        default=None,
        min_length=16,
        description="Access token for the page and every endpoint (header `Authorization: Bearer …`, "
        "`?token=…` once, then a cookie). Required when `listen` is not a loopback address.",
    )
    token_file: Path | None = Field(default=None, description="File holding the token (instead of `token`).")
    preview_fps: float = Field(
        default=4.0, gt=0, le=15, description="Most preview images encoded per second (only while watched)."
    )
    preview_width: int = Field(default=640, ge=160, le=1920, description="Width of the preview image, px.")
    preview_quality: int = Field(default=70, ge=20, le=95, description="JPEG quality of the preview.")
    preview_faces: bool = Field(
        default=True,
        description="Redact faces in the preview too (masks always are). false saves CPU on a Pi when only "
        "trusted people can reach the page.",
    )
    recent_events: int = Field(default=12, ge=1, le=100, description="Events listed on the page.")
    max_clients: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Requests served at once (after the access check); more get 503. Connections still "
        "sending their request have a pool of the same size, where the oldest makes way for a new one.",
    )
    max_clients_per_address: int = Field(
        default=6,
        ge=1,
        le=64,
        description="Connections one client address may hold (IPv6: one /64); more get 503. Browsers "
        "open up to six per site.",
    )
    head_timeout_s: float = Field(
        default=10.0,
        ge=1,
        le=120,
        description="Seconds a connection has to send a whole request (line and headers), however "
        "slowly it trickles; then it is closed. Also how long an idle keep-alive connection is kept.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the page may be reached by, besides IP addresses, localhost and this "
        "machine's own name (e.g. pole-17.city.example). Requests naming any other host are refused "
        "(421), so a web page elsewhere cannot read the status page through a visitor's browser "
        "(DNS rebinding).",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value.strip()

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        names = [v.strip().lower().rstrip(".") for v in value]
        bad = [v for v in names if not _HOST_NAME.fullmatch(v)]
        if bad:
            raise ValueError(f"not host names: {', '.join(map(repr, bad))}")
        return names

    @model_validator(mode="after")
    def _token_when_exposed(self) -> HttpConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("http.token and http.token_file are alternatives; set one")
        address = parse_listen(self.listen)
        if address is not None and not is_loopback(address[0]) and self.token is None and self.token_file is None:
            raise ValueError(
                f"http.listen = {self.listen!r} is reachable from other machines: set http.token "
                "(16+ characters) or http.token_file"
            )
        return self


class TelemetryConfig(Section):
    enabled: bool = Field(default=True, description="Publish telemetry on {prefix}/{node}/telemetry.")
    interval_s: float = Field(
        default=60.0,
        ge=5,
        le=86400,
        description="Seconds between telemetry records (lowest spool priority: first to go when full).",
    )


class HealthConfig(Section):
    frozen_after_s: float = Field(
        default=20.0,
        ge=2,
        le=3600,
        description="Identical frames for this long (stream time) mean a frozen camera: camera_lost.",
    )
    stalled_after_s: float = Field(
        default=15.0,
        ge=2,
        le=3600,
        description="A live source that delivers no frame for this long, although it is open, is stalled "
        "(a hung driver or stream): camera_lost.",
    )
    lost_after_s: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="A live camera that is away this long (not opened since start, or reopening after a "
        "drop) raises camera_lost; shorter drops raise nothing by themselves (they count towards "
        "camera_unstable). The agent keeps running and retrying either way.",
    )
    unstable_drops: int = Field(
        default=3,
        ge=2,
        le=1000,
        description="This many stream drops within unstable_window_s raise one camera_unstable (with counts) "
        "instead of an event per drop.",
    )
    unstable_window_s: float = Field(
        default=300.0,
        ge=10,
        le=86400,
        description="The window in which unstable_drops drops make a camera unstable.",
    )
    stable_after_s: float = Field(
        default=300.0,
        ge=5,
        le=86400,
        description="An unstable camera is stable again (camera_stable, with the episode's drops and "
        "downtime) after streaming this long without a drop.",
    )


ROLES = ("viewer", "operator", "admin")


class ControlConfig(Section):
    enabled: bool = Field(
        default=True, description="Accept commands on {prefix}/{node}/cmd/# (needs uplink.broker)."
    )
    max_payload_bytes: int = Field(
        default=65536, ge=1024, le=1048576, description="Larger command payloads are refused."
    )
    queue: int = Field(default=8, ge=1, le=256, description="Commands waiting to run; more are refused (busy).")
    max_age_s: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="A request made longer ago than this (its `ts`, judged on the trusted clock: NTP or GNSS) "
        "is stale and refused; its id and nonce are remembered at least this long.",
    )
    remember_ids: int = Field(
        default=4096,
        ge=16,
        le=100000,
        description="Most request ids and nonces remembered (across restarts) to refuse replays. Each is kept "
        "until its request could no longer pass the freshness check; while this many are still needed, new "
        "requests are refused rather than an id forgotten early.",
    )
    unsigned_role: Literal["none", "viewer", "operator", "admin"] | None = Field(
        default=None,
        description="What a command without an operator's signature may do: none refuses it, otherwise it runs "
        "with this role (viewer: read only; operator: config and snapshots; admin: everything). Default: "
        "admin with node.profile = development (agent --simulate, a bench), none with production.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="The fleet CA that operators' certificates must chain to, for signed commands. Default: "
        "uplink.tls.ca_file.",
    )
    rate_per_min: float = Field(
        default=30.0,
        gt=0,
        le=6000,
        description="Commands each operator (each signing identity; all unsigned requests together) may send "
        "per minute, on average; more are refused.",
    )
    rate_burst: int = Field(
        default=20, ge=1, le=1000, description="Commands an operator may send at once before rate_per_min applies."
    )
    remote_gpio_pins: list[int] = Field(
        default_factory=list,
        description="GPIO pins (BCM) that a live change (config/set of rules.outputs) may drive. Outputs on "
        "other pins come only from this file. Empty: remote changes may keep the node's GPIO outputs but "
        "add or move none.",
    )
    model_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts model/update may download from (host or host:port, e.g. models.city.example), "
        "redirects included. Empty: any host reachable over http(s).",
    )
    model_import_dir: Path | None = Field(
        default=None,
        description="model/update with `path`: files are taken from this folder only. Default: "
        "<state_dir>/models/import.",
    )
    model_updates_max_mb: float = Field(
        default=256.0,
        gt=0,
        le=4096,
        description="Most disk the downloaded and imported models may use (<state_dir>/models/updates); "
        "models not in use are deleted to make room, and a download never eats into the spool's room.",
    )
    model_probation_frames: int = Field(
        default=30,
        ge=1,
        le=10000,
        description="model/update: detector runs the new model must survive, and produce something in when "
        "the old one did, before it is kept.",
    )
    model_probation_timeout_s: float = Field(
        default=300.0, gt=0, description="model/update: the longest wait for those detector runs."
    )
    snapshot_max_side: int = Field(
        default=1280, ge=160, le=4096, description="Longest side of a snapshot image, px."
    )
    snapshot_quality: int = Field(default=80, ge=20, le=95, description="JPEG quality of snapshots.")

    @field_validator("remote_gpio_pins")
    @classmethod
    def _pins(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if not 0 <= p <= 53]
        if bad:
            raise ValueError(f"not BCM GPIO numbers (0..53): {', '.join(map(str, bad))}")
        return sorted(set(value))

    @field_validator("model_hosts")
    @classmethod
    def _model_hosts(cls, value: list[str]) -> list[str]:
        hosts = [v.strip().lower().rstrip(".") for v in value]
        bad = [h for h in hosts if not _HOST_PORT.fullmatch(h)]
        if bad:
            raise ValueError(f"not host or host:port: {', '.join(map(repr, bad))}")
        return hosts
