"""Config tables of the rules engine (`[rules]`), its local outputs and tamper detection (`[tamper]`).

Geometry is in normalised frame coordinates (0..1, origin top-left), so a zone survives a change of
camera resolution. The same models validate the config file and live updates from the control
plane (`RuleEngine.update`), so both are refused for the same reasons with the same messages.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import Section

Point = tuple[float, float]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,63}$"
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ZONE_RULES = ("zone_enter", "zone_exit", "dwell", "crowding", "object_left_behind", "object_removed")
RuleType = Literal[
    "zone_enter", "zone_exit", "dwell", "line_crossing", "crowding", "object_left_behind", "object_removed"
]
Direction = Literal["any", "left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def check_point(point: Point) -> Point:
    x, y = point
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"point {list(point)} is outside the frame: coordinates are normalised to 0..1")
    return point


def polygon_area(points: list[Point]) -> float:
    """Shoelace area (normalised units) of a simple polygon."""
    total = 0.0
    for i, (x1, y1) in enumerate(points):
        x2, y2 = points[(i + 1) % len(points)]
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def check_polygon(points: list[Point]) -> list[Point]:
    for p in points:
        check_point(p)
    if polygon_area(points) <= 1e-6:
        raise ValueError("polygon has no area (its points are on one line or repeated)")
    return points


class Zone(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Zone name, quoted in events as `zone`.")
    polygon: list[Point] = Field(
        min_length=3,
        max_length=64,
        description="Corners [x, y] in normalised frame coordinates (0..1, origin top-left).",
    )

    @field_validator("polygon")
    @classmethod
    def _area(cls, value: list[Point]) -> list[Point]:
        return check_polygon(value)


class Line(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Line name, quoted in events as `zone`.")
    points: tuple[Point, Point] = Field(
        description="The two ends [[x1, y1], [x2, y2]] of the line, normalised (0..1). A mostly vertical "
        "line is crossed left_to_right / right_to_left, a mostly horizontal one top_to_bottom / bottom_to_top."
    )

    @field_validator("points")
    @classmethod
    def _ends(cls, value: tuple[Point, Point]) -> tuple[Point, Point]:
        a, b = check_point(value[0]), check_point(value[1])
        if abs(a[0] - b[0]) < 1e-4 and abs(a[1] - b[1]) < 1e-4:
            raise ValueError("the two ends of a line must differ")
        return value

    @property
    def directions(self) -> tuple[str, str]:
        """The two crossing directions of this line: (along its normal, against it)."""
        (x1, y1), (x2, y2) = self.points
        if abs(y2 - y1) >= abs(x2 - x1):
            return ("left_to_right", "right_to_left")
        return ("top_to_bottom", "bottom_to_top")


class TimeWindow(Section):
    days: list[Day] = Field(
        default_factory=lambda: list(DAYS), min_length=1, description="Days the window starts on."
    )
    start: str = Field(default="00:00", description="Local start time HH:MM (rules.timezone).")
    end: str = Field(
        default="24:00", description="Local end time HH:MM; an end before the start runs past midnight."
    )

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.fullmatch(value):
            raise ValueError("times are HH:MM in 24-hour form, e.g. 07:30 or 22:00 (24:00 ends the day)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end:
            raise ValueError("a time window needs start != end (00:00 to 24:00 is the whole day)")
        return self


class OutputConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Output name that rules refer to.")
    kind: Literal["gpio", "log"] = Field(
        default="log",
        description="gpio: a GPIO line on a Raspberry Pi (gpiozero, else lgpio); log: only a log line. "
        "A gpio output on a machine without GPIO falls back to log with a warning.",
    )
    pin: int | None = Field(default=None, ge=0, le=53, description="BCM GPIO number (gpio outputs).")
    active_high: bool = Field(default=True, description="false: the line is driven low when active.")

    @model_validator(mode="after")
    def _pin(self) -> OutputConfig:
        if self.kind == "gpio" and self.pin is None:
            raise ValueError(f"output {self.name!r}: a gpio output needs `pin`")
        return self


class Rule(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Rule name, quoted in events as `rule`.")
    type: RuleType = Field(
        description="zone_enter, zone_exit, dwell (in the zone longer than dwell_s), line_crossing, "
        "crowding (more than max_count objects in the zone), object_left_behind (an object stands still "
        "in the zone for dwell_s), object_removed (an object that stood in the zone for dwell_s is gone)."
    )
    enabled: bool = Field(default=True, description="false keeps the rule in the file but inactive.")
    zone: str | None = Field(default=None, description="Zone name (every type except line_crossing).")
    line: str | None = Field(default=None, description="Line name (line_crossing).")
    classes: list[str] = Field(
        default_factory=list, description="Labels the rule considers; empty: every analysed label."
    )
    min_score: float = Field(default=0.0, ge=0, le=1, description="Minimum detector score of the object.")
    min_size: float = Field(
        default=0.0, ge=0, lt=1, description="Smallest object box, as a share of the frame area."
    )
    schedule: list[TimeWindow] = Field(
        default_factory=list, description="When the rule may fire (local time); empty: always."
    )
    cooldown_s: float = Field(
        default=0.0, ge=0, description="Least stream time between two events of this rule (any object)."
    )
    dwell_s: float = Field(
        default=30.0,
        gt=0,
        description="dwell: time in the zone before it fires; object_left_behind / object_removed: "
        "time an object must have stood in the zone.",
    )
    max_count: int = Field(default=5, ge=0, description="crowding: fires when more objects than this.")
    hold_s: float = Field(
        default=2.0, ge=0, description="crowding: how long the count must stay above (and below to re-arm)."
    )
    direction: Direction = Field(default="any", description="line_crossing: which crossings fire.")
    priority: Literal["critical", "normal"] = Field(default="normal", description="Event priority.")
    thumbnail: bool = Field(default=True, description="Attach a redacted thumbnail of the object.")
    snapshot: bool = Field(
        default=False,
        description="Request a full-frame snapshot (privacy masks and face redaction applied, audited); "
        "the control plane's snapshot command serves it.",
    )
    output: str | None = Field(default=None, description="Name of a local output to drive ([[rules.outputs]]).")
    output_s: float = Field(default=5.0, gt=0, le=3600, description="How long the output stays active.")

    @field_validator("classes")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("labels must be non-empty strings")
        return cleaned

    @model_validator(mode="after")
    def _target(self) -> Rule:
        if self.type == "line_crossing":
            if not self.line or self.zone:
                raise ValueError(f"rule {self.name!r}: a line_crossing rule names a `line` (and no zone)")
        elif not self.zone or self.line:
            raise ValueError(f"rule {self.name!r}: a {self.type} rule names a `zone` (and no line)")
        elif self.direction != "any":
            raise ValueError(f"rule {self.name!r}: `direction` is only for line_crossing rules")
        return self


class RulesConfig(Section):
    enabled: bool = Field(default=True, description="Evaluate the rules below.")
    timezone: str = Field(
        default="UTC",
        description="IANA time zone of rule schedules, e.g. Europe/Amsterdam (durations use stream time).",
    )
    untrusted_clock: Literal["active", "inactive"] = Field(
        default="active",
        description="Whether scheduled rules fire while the wall clock is not trusted (no NTP/GNSS yet).",
    )
    anchor: Literal["bottom", "centre"] = Field(
        default="bottom",
        description="Point of an object's box tested against zones and lines: bottom centre (where it "
        "touches the ground) or box centre.",
    )
    debounce_s: float = Field(
        default=0.5, ge=0, le=10, description="An object must stay in (or out of) a zone this long to count."
    )
    line_margin: float = Field(
        default=0.01,
        ge=0,
        le=0.2,
        description="Distance from a line (share of the frame diagonal) an object must reach on the "
        "other side for a crossing, so jitter on the line is not counted twice.",
    )
    warmup_s: float = Field(
        default=5.0,
        ge=0,
        description="Objects already present this long after start (or a rule change) did not enter: "
        "no zone_enter or object_left_behind for them, so a restart does not re-trigger parked cars.",
    )
    stationary_memory_s: float = Field(
        default=600.0,
        ge=0,
        description="A still object whose track was lost (dark, headlights) is remembered this long; if it "
        "is found again in the same place it is the same object and no rule fires again.",
    )
    zones: list[Zone] = Field(default_factory=list, description="Polygons rules refer to.")
    lines: list[Line] = Field(default_factory=list, description="Lines line_crossing rules refer to.")
    outputs: list[OutputConfig] = Field(default_factory=list, description="Local outputs rules can drive.")
    rules: list[Rule] = Field(default_factory=list, description="The rules, evaluated on every frame.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/Amsterdam, UTC)") from None
        return value

    @model_validator(mode="after")
    def _references(self) -> RulesConfig:
        for kind, items in (("zone", self.zones), ("line", self.lines), ("output", self.outputs)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(dupes)}")
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate rule name(s): {', '.join(dupes)}")
        zones = {z.name for z in self.zones}
        lines = {ln.name: ln for ln in self.lines}
        outputs = {o.name for o in self.outputs}
        for rule in self.rules:
            if rule.zone and rule.zone not in zones:
                raise ValueError(f"rule {rule.name!r} names zone {rule.zone!r}, which is not in rules.zones")
            if rule.line:
                if rule.line not in lines:
                    raise ValueError(
                        f"rule {rule.name!r} names line {rule.line!r}, which is not in rules.lines"
                    )
                allowed = lines[rule.line].directions
                if rule.direction != "any" and rule.direction not in allowed:
                    raise ValueError(
                        f"rule {rule.name!r}: line {rule.line!r} is crossed {allowed[0]} or {allowed[1]}, "
                        f"not {rule.direction}"
                    )
            if rule.output and rule.output not in outputs:
                raise ValueError(
                    f"rule {rule.name!r} names output {rule.output!r}, which is not in rules.outputs"
                )
        return self


class TamperConfig(Section):
    enabled: bool = Field(default=True, description="Watch for a covered, blinded, defocused or moved camera.")
    interval_s: float = Field(
        default=0.5, gt=0, le=10, description="Stream time between two checks (each costs about 1 ms)."
    )
    work_width: int = Field(
        default=320, ge=64, le=1280, description="Width frames are reduced to for the checks."
    )
    learn_s: float = Field(
        default=5.0, gt=0, description="Stream time to learn the reference view after start or recovery."
    )
    adapt_s: float = Field(
        default=120.0,
        gt=0,
        description="Time constant of the reference: slow changes (dusk, dawn, weather) are followed, "
        "sudden ones are tamper candidates.",
    )
    confirm_s: float = Field(
        default=3.0, ge=0, description="A condition must last this long to raise a tamper event."
    )
    recover_s: float = Field(
        default=3.0, ge=0, description="The view must look normal this long to raise tamper_recovered."
    )
    cover_ratio: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="covered/blinded: contrast below this share of the reference contrast.",
    )
    blur_ratio: float = Field(
        default=0.35, gt=0, lt=1, description="defocused: sharpness below this share of the reference."
    )
    move_shift: float = Field(
        default=0.03, gt=0, lt=0.5, description="moved: view shifted by more than this share of its width."
    )
    move_similarity: float = Field(
        default=0.35,
        gt=0,
        lt=1,
        description="moved: correlation with the reference below this (the view changed entirely).",
    )
    relearn_after_s: float = Field(
        default=900.0,
        ge=0,
        description="A moved camera that stays moved this long: its new view becomes the reference "
        "(tamper_recovered with reason relearned). 0: never.",
    )
