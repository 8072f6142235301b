"""Config of privacy by design (`[privacy]`): masks, face redaction and the audit log.

These settings decide what an image that leaves the node may show; `agent privacy report` quotes
them (and their descriptions) for a data-protection officer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agent.config.base import Section
from agent.config.rules import NAME_PATTERN, Point, check_polygon


class Mask(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Mask name (for the report and the audit log).")
    polygon: list[Point] = Field(
        min_length=3,
        max_length=64,
        description="Corners [x, y], normalised (0..1): blacked out before detection and in every image.",
    )

    @field_validator("polygon")
    @classmethod
    def _area(cls, value: list[Point]) -> list[Point]:
        return check_polygon(value)


class FacesConfig(Section):
    redact: bool = Field(
        default=True,
        description="Redact faces in every image that leaves the node. false sends faces as captured; "
        "the privacy report says so.",
    )
    model: str = Field(
        default="centerface",
        description="Face detector: a manifest name (`agent models fetch centerface`) or a .onnx path.",
    )
    score_threshold: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Face score above which a region is redacted (low: a false alarm only hides pixels).",
    )
    method: Literal["pixelate", "blur", "fill"] = Field(
        default="pixelate", description="How a face is made unrecognisable."
    )
    margin: float = Field(
        default=0.6,
        ge=0,
        le=2,
        description="Margin added around each face box, share of its size: the default hides the whole "
        "head (hair and ears identify people too, and an outline around a small patch still reads as a face).",
    )
    fallback: Literal["pixelate_persons", "drop_person_thumbnails"] = Field(
        default="pixelate_persons",
        description="When no face model is installed (or it fails): pixelate every person box in the "
        "image, or send no thumbnail that shows a person. Never unredacted.",
    )


class AuditConfig(Section):
    max_kb: int = Field(
        default=1024, ge=16, le=65536, description="Size at which the audit log file is rotated."
    )
    keep: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Rotated audit files kept besides the current one. A file holding privacy-relevant "
        "entries (masks, zones, rules, snapshots, config and model changes) that the back office has not "
        "seen the head of yet is kept beyond this, up to four times as many files.",
    )
    key_file: Path | None = Field(
        default=None,
        description="The node secret that keys the audit chain (HMAC), written by vigil-provision "
        "(/etc/vigil/audit.key in a node bundle). Without one the node creates its own, "
        "<state_dir>/audit/audit.key, and says so in its log.",
    )


class PrivacyConfig(Section):
    masks: list[Mask] = Field(default_factory=list, description="Privacy masks (polygons).")
    faces: FacesConfig = Field(default_factory=FacesConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    local_thumbnails: int = Field(
        default=500,
        ge=0,
        le=100000,
        description="Most thumbnails the node keeps for its status page (in memory, never on disk; "
        "at most 16 MB); each also expires after spool.ttl_thumb_days of running time.",
    )
