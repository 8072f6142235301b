"""What the rules engine decides: frozen values, with no reference to anything that acts on them.

`RuleEngine.evaluate(FrameInput) -> list[Firing]` is the whole seam between deciding and acting:
the engine reads a frame's tracks and returns firings; `RuleDispatcher` turns each firing into an
event, a GPIO pulse, a snapshot request and audit entries. A firing copies what it needs from the
track when it is decided (the tracker keeps mutating its `Track` objects), so a firing can be
stored, compared and asserted on after the frame has gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agent.config.rules import Rule, RuleType
from agent.rules.geometry import CrossingDirection, PixelBox
from agent.track import Track, TrackEvent

FiringKind = RuleType  # a rule fires events of its own type: a dwell rule fires `dwell`
Priority = Literal["critical", "normal"]


@dataclass(frozen=True)
class FrameInput:
    """Everything the engine may look at for one analysed frame.

    `tracks` are the tracker's tracks (only confirmed ones count), `transitions` its appeared/left
    events of this frame. `wall` is the wall-clock time (epoch seconds) while the clock is trusted and
    None while it is not; only scheduled rules read it.
    """

    t: float
    width: int
    height: int
    tracks: Sequence[Track]
    transitions: Sequence[TrackEvent] = ()
    wall: float | None = None


@dataclass(frozen=True)
class FiringTrack:
    """The object a firing is about, as it was when the rule fired (pixel box of the analysed frame)."""

    track_id: int
    label: str
    score: float
    box: PixelBox
    first_seen: float
    last_seen: float

    @classmethod
    def of(cls, track: Track) -> FiringTrack:
        return cls(track.track_id, track.label, track.best_score, track.box, track.first_seen, track.last_seen)

    def as_track(self) -> Track:
        """A detached `Track` with these values, for code that builds events from tracks."""
        return Track(
            track_id=self.track_id,
            box=self.box,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            label_scores={self.label: self.score},
            confirmed=True,
            best_score=self.score,
        )


@dataclass(frozen=True)
class Actions:
    """What a rule asks for when it fires (from its config at the moment it fired)."""

    priority: Priority = "normal"
    thumbnail: bool = True
    snapshot: bool = False
    output: str | None = None
    output_s: float = 5.0

    @classmethod
    def of(cls, rule: Rule) -> Actions:
        return cls(rule.priority, rule.thumbnail, rule.snapshot, rule.output, rule.output_s)


@dataclass(frozen=True)
class Firing:
    """One rule fired once: the event it makes and the actions it asks for.

    `track` is None for crowding, which is about a group: `region` then holds the boxes of the
    counted objects. Exactly the kind's own extra field is set (`duration_s`, `direction` or `count`).
    """

    rule: str
    kind: FiringKind
    t: float
    actions: Actions
    zone: str | None = None
    line: str | None = None
    track: FiringTrack | None = None
    region: tuple[PixelBox, ...] = ()
    duration_s: float | None = None
    direction: CrossingDirection | None = None
    count: int | None = None

    @property
    def target(self) -> str:
        """The zone's or the line's name: what the event calls `zone`."""
        return self.zone or self.line or ""

    @property
    def track_id(self) -> int | None:
        return self.track.track_id if self.track is not None else None


def region_union(region: Sequence[PixelBox]) -> PixelBox | None:
    """The box around a group of boxes (a crowding event's `bbox`); None for no boxes."""
    if not region:
        return None
    return (
        min(r[0] for r in region),
        min(r[1] for r in region),
        max(r[2] for r in region),
        max(r[3] for r in region),
    )
