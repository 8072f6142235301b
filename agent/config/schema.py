"""The configuration schema: one pydantic model per stage, all strict about unknown keys.

Every field carries a description because `agent check-config` and the privacy report quote them.
Validators are pure functions of the value; nothing here opens a file or a device. Tables that
belong to one stage may live in their own module under agent/config/ and are attached to `Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import Section
from agent.config.control import ControlConfig, HealthConfig, HttpConfig, TelemetryConfig
from agent.config.modem import GnssConfig, ModemConfig
from agent.config.privacy import PrivacyConfig
from agent.config.rules import RulesConfig, TamperConfig
from agent.config.security import exposures
from agent.config.update import UpdateConfig

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class StaticLocation(Section):
    lat: float = Field(ge=-90, le=90, description="Latitude in decimal degrees (WGS84).")
    lon: float = Field(ge=-180, le=180, description="Longitude in decimal degrees (WGS84).")
    alt: float | None = Field(default=None, description="Altitude in metres, if known.")


class NodeConfig(Section):
    id: str = Field(
        default="sim-node",
        pattern=NODE_ID_PATTERN,
        description="Node identity: the MQTT client id and topic level; the certificate CN on a fleet.",
    )
    site: str = Field(default="", description="Human-readable site name, for operators.")
    state_dir: Path | None = Field(
        default=None,
        description="Where the spool, thumbnails, counters and audit log live. "
        "Default: $XDG_DATA_HOME/vigil (per user) or /var/lib/vigil when run as a service.",
    )
    location: StaticLocation | None = Field(
        default=None, description="Fixed position used when no GNSS fix is available."
    )
    profile: Literal["development", "production"] = Field(
        default="development",
        description="production (what vigil-provision writes into node bundles) refuses settings that "
        "expose the node on its network: plain mqtt:// to a broker beyond this machine with a password "
        "or with the control plane on. development (a laptop, a bench) only warns about them, at start "
        "and in `agent check-config`.",
    )


class CaptureConfig(Section):
    source: str = Field(
        default="auto",
        description="Frame source: auto (webcam, else synthetic), synthetic[:SEED], file:PATH or a path, "
        "webcam[:INDEX], rtsp://..., picamera2.",
    )
    fps: float = Field(default=10.0, gt=0, le=60, description="Target analysis frame rate.")
    width: int = Field(default=640, ge=64, le=4096, description="Analysis frame width (camera sources).")
    height: int = Field(default=360, ge=48, le=4096, description="Analysis frame height (camera sources).")
    main_width: int = Field(
        default=1920, ge=64, le=8192, description="picamera2 main stream width, used only for crops."
    )
    main_height: int = Field(default=1080, ge=48, le=8192, description="picamera2 main stream height.")
    realtime: bool = Field(
        default=True,
        description="Pace files and the synthetic scene at their fps (false: as fast as possible).",
    )
    loop: bool = Field(default=False, description="Restart a file source at its end instead of stopping.")
    reconnect_initial_s: float = Field(
        default=1.0, gt=0, description="First wait before reopening a lost stream (RTSP, webcam)."
    )
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Cap of the reconnect backoff.")


class MotionConfig(Section):
    enabled: bool = Field(
        default=True, description="Run the detector only on motion, live tracks or keyframes."
    )
    width: int = Field(
        default=160, ge=32, le=640, description="Width the frame is reduced to for differencing."
    )
    pixel_threshold: int = Field(
        default=22, ge=1, le=255, description="Grey-level change that counts a pixel as moving."
    )
    min_area: float = Field(
        default=0.0015,
        gt=0,
        lt=1,
        description="Share of the frame that must move to wake the detector.",
    )
    background_alpha: float = Field(
        default=0.05, gt=0, le=1, description="How fast the reference frame follows slow light changes."
    )
    keyframe_interval_s: float = Field(
        default=5.0, gt=0, description="Run the detector at least this often even without motion."
    )
    regions: bool = Field(
        default=False,
        description="Detect in crops around motion and moving tracks, at the model's input size, instead "
        "of the whole frame shrunk to it (Frigate's trick): small, distant objects keep their pixels. "
        "Keyframes and motion too large for the crops use the whole frame. For models trained at many "
        "scales (COCO models such as yolox-nano), not vigil-synth; see bench/README.md.",
    )
    max_regions: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Most crops per frame (one detector run each); more separate motion than this "
        "analyses the whole frame instead.",
    )


class ThermalConfig(Section):
    """Adaptive detector rate: a hot Pi slows the detector down instead of being throttled hard."""

    enabled: bool = Field(
        default=True,
        description="Lower the detector's rate while the CPU is hot or the firmware reports throttling.",
    )
    warm_c: float = Field(
        default=75.0,
        gt=0,
        le=125,
        description="CPU temperature (°C) from which the detector runs at half the capture rate "
        "(Raspberry Pi firmware starts throttling at 80 °C).",
    )
    hot_c: float = Field(
        default=80.0,
        gt=0,
        le=125,
        description="CPU temperature (°C) from which the detector runs at `min_fps` only.",
    )
    min_fps: float = Field(
        default=1.0, gt=0, le=60, description="Detector runs per second while hot: never fewer."
    )
    resume_margin_c: float = Field(
        default=5.0,
        ge=0,
        le=30,
        description="Degrees below a threshold before the detector speeds up again (no flapping).",
    )
    hold_s: float = Field(
        default=60.0, ge=0, description="Shortest time at a slower rate before speeding up again."
    )
    interval_s: float = Field(
        default=5.0, gt=0, le=300, description="How often temperature and throttling flags are read."
    )

    @model_validator(mode="after")
    def _order(self) -> ThermalConfig:
        if self.hot_c < self.warm_c:
            raise ValueError("detect.thermal.hot_c must be >= detect.thermal.warm_c")
        return self


# The default `detect.classes`: road users, spelled as COCO and VOC models spell them.
ROAD_USERS = ("person", "bicycle", "car", "motorbike", "motorcycle", "bus", "truck")


class DetectConfig(Section):
    model: str = Field(
        default="auto",
        description="ONNX model: a path to a .onnx file (its card beside it), a model name from the "
        "manifest (installed under <state_dir>/models or shipped in models/), or auto: vigil-synth for the "
        "synthetic scene, yolox-nano for real cameras when it is installed.",
    )
    score_threshold: float = Field(default=0.4, ge=0, le=1, description="Minimum detection score kept.")
    nms_iou: float = Field(default=0.45, gt=0, le=1, description="IoU above which overlapping boxes merge.")
    classes: list[str] = Field(
        default_factory=lambda: list(ROAD_USERS),
        description="Labels analysed; everything else the model finds is dropped on the node. "
        "Empty means every label of the model. The default names road users in the spellings of several "
        "label sets (COCO, VOC), so labels the model lacks are expected there; in a list of your own they "
        "are a warning at start and refused by `config/set`.",
    )
    min_box_area: float = Field(
        default=0.0004, ge=0, lt=1, description="Smallest box kept, as a share of the frame area."
    )
    threads: int = Field(default=2, ge=1, le=16, description="onnxruntime intra-op threads.")
    spin: bool = Field(
        default=False,
        description="Let onnxruntime's worker threads spin between operators: more frames/s when the "
        "cores are otherwise idle, at more CPU (heat) per frame and no gain while the capture thread "
        "decodes video (bench/README.md).",
    )
    thermal: ThermalConfig = Field(default_factory=ThermalConfig)

    @field_validator("classes")
    @classmethod
    def _labels_not_blank(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("labels must be non-empty strings")
        return cleaned


class TrackConfig(Section):
    iou_match: float = Field(default=0.25, gt=0, le=1, description="Minimum IoU to continue a track.")
    confirm_hits: int = Field(
        default=3, ge=1, le=30, description="Detections needed before a track is reported (object_appeared)."
    )
    max_missed_s: float = Field(
        default=2.0, gt=0, description="Seconds unseen before a confirmed track ends (object_left)."
    )
    stationary_after_s: float = Field(
        default=10.0, gt=0, description="Seconds nearly still after which an object counts as stationary."
    )
    stationary_max_missed_s: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a stationary object may go unseen (headlights, shadows, occlusion) and keep "
        "its track, so parked cars do not re-trigger.",
    )


class EventsConfig(Section):
    thumbnails: bool = Field(default=True, description="Attach a small JPEG crop of the object to events.")
    thumb_max_side: int = Field(default=320, ge=32, le=1024, description="Longest side of a thumbnail, px.")
    thumb_quality: int = Field(default=80, ge=10, le=95, description="JPEG quality of thumbnails.")
    thumb_margin: float = Field(
        default=0.15, ge=0, le=1, description="Margin around the box, share of its size."
    )
    stdout: bool = Field(default=True, description="Print each event as a JSON line (simulate mode).")
    schema_revision: Literal["1", "1.1"] = Field(
        default="1.1",
        description='Event record revision sent: "1.1" leaves out fields a consumer restores exactly (null '
        'and default values, the node id the topic names; docs/events.md), "1" sends every field of '
        "vigil.event/1 for consumers that still require them. schema/event-v1.json accepts both.",
    )

    @field_validator("schema_revision", mode="before")
    @classmethod
    def _revision_as_text(cls, value: object) -> object:
        """`schema_revision = 1.1` in TOML, or VIGIL_EVENTS__SCHEMA_REVISION=1, mean the revisions "1.1", "1"."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{value:g}"
        return value


class TlsConfig(Section):
    ca_file: Path | None = Field(
        default=None, description="CA certificate(s) that signed the broker's certificate."
    )
    cert_file: Path | None = Field(default=None, description="This node's client certificate (mutual TLS).")
    key_file: Path | None = Field(default=None, description="This node's private key (keep it 0600).")


class UplinkConfig(Section):
    broker: str = Field(
        default="",
        description="mqtt://host:port or mqtts://host:port (TLS). Empty: no broker; events go to the local "
        "JSON-lines output and the spool acknowledges them once written.",
    )
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT protocol version.")
    topic_prefix: str = Field(
        default="vigil",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="First topic level(s): topics are {prefix}/{node}/events, …/thumbs/{id}, …/status.",
    )
    username: str | None = Field(default=None, description="MQTT username (optional; mTLS needs none).")
    password: str | None = Field(default=None, description="MQTT password (prefer password_file).")
    password_file: Path | None = Field(default=None, description="File holding the MQTT password.")
    tls: TlsConfig = Field(default_factory=TlsConfig)
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive interval.")
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="How long the broker keeps the node's session (its command subscription) while the node "
        "is away, so commands sent during an outage arrive when it returns (stale ones get an error reply, "
        "see control.max_age_s). 0: a clean session each time. MQTT 3.1.1 brokers apply their own expiry "
        "(Mosquitto: persistent_client_expiration).",
    )
    inflight: int = Field(default=20, ge=1, le=1000, description="Publishes awaiting PUBACK at once.")
    reconnect_min_s: float = Field(
        default=1.0, gt=0, description="First reconnect delay (jittered, doubling)."
    )
    reconnect_max_s: float = Field(default=120.0, gt=0, description="Cap of the reconnect delay.")
    backlog_share: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Share of publishes reserved for the backlog while live records flow.",
    )
    max_bytes_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Uplink byte-rate cap (metered links); thumbnails shrink or wait first.",
    )
    max_bytes_per_day: int | None = Field(
        default=None,
        gt=0,
        description="Daily byte cap; past 90% only metadata and critical records are sent.",
    )
    link_profile: str | None = Field(
        default=None,
        description="Simulate only: a scripted link (profile name or file) between agent and broker.",
    )
    drain_at_end_s: float = Field(
        default=30.0,
        ge=0,
        description="When a finite source ends (a video file, --max-frames), wait up to this long for the "
        "spool to drain to the broker before exiting; 0: exit at once (what is left goes on the next start). "
        "A signal (SIGTERM, Ctrl-C) never waits.",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        """`protocol = 5` in TOML, or VIGIL_UPLINK__PROTOCOL=5, means the version "5"."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _broker_url(self) -> UplinkConfig:
        if self.broker and not self.broker.startswith(("mqtt://", "mqtts://")):
            raise ValueError("uplink.broker must start with mqtt:// or mqtts://")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("uplink.reconnect_max_s must be >= uplink.reconnect_min_s")
        return self


class SpoolConfig(Section):
    budget_mb: float = Field(
        default=256.0, gt=0, description="Most disk the spool may use (database and journal)."
    )
    free_floor_mb: float = Field(
        default=64.0,
        ge=0,
        description="Free space always left on the filesystem; the spool evicts to keep it.",
    )
    commit_interval_ms: int = Field(
        default=200,
        ge=10,
        le=5000,
        description="Group commit interval (fewer, larger writes spare the SD card).",
    )
    ttl_critical_days: float = Field(
        default=7.0, gt=0, description="Critical records expire after this long unsent."
    )
    ttl_event_days: float = Field(
        default=7.0, gt=0, description="Event metadata expires after this long unsent."
    )
    ttl_thumb_days: float = Field(default=7.0, gt=0, description="Thumbnails expire after this long unsent.")
    ttl_telemetry_days: float = Field(
        default=7.0, gt=0, description="Telemetry expires after this long unsent."
    )


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")


class Config(Section):
    """The whole agent configuration (one TOML file)."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    modem: ModemConfig = Field(default_factory=ModemConfig)
    gnss: GnssConfig = Field(default_factory=GnssConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    tamper: TamperConfig = Field(default_factory=TamperConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)

    @model_validator(mode="after")
    def _reconnect_order(self) -> Config:
        if self.capture.reconnect_max_s < self.capture.reconnect_initial_s:
            raise ValueError("capture.reconnect_max_s must be >= capture.reconnect_initial_s")
        return self

    @model_validator(mode="after")
    def _production_is_not_exposed(self) -> Config:
        found = exposures(self) if self.node.profile == "production" else []
        if found:
            raise ValueError("node.profile = production refuses: " + "; ".join(found))
        return self
