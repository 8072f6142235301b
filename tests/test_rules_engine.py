"""The rules engine alone: tracks in, firings out. No emitter, no GPIO, no audit log, no files.

Each scenario moves hand-made tracks over a 100 × 100 frame (so pixels read as percent) and asserts
the exact firings `RuleEngine.evaluate` returns, frame by frame.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config.rules import RulesConfig
from agent.rules import Firing, FrameInput, RuleEngine
from agent.rules.dispatch import rule_fields
from agent.track import Track, TrackEvent

FPS = 10
SIZE = 100
MONDAY_NOON_UTC = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()  # 13:00 in Amsterdam
SQUARE = {"name": "square", "polygon": [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]]}
INSIDE, OUTSIDE = (50.0, 50.0), (20.0, 50.0)


class Street:
    """Hand-placed tracks fed to a `RuleEngine` at FPS; an object stands for its box's bottom centre."""

    def __init__(self, rules: dict, *, wall: Callable[[float], float | None] | None = None) -> None:
        self.engine = RuleEngine(RulesConfig.model_validate(rules))
        self.wall = wall or (lambda t: MONDAY_NOON_UTC + t)
        self.index = 0
        self.tracks: dict[int, Track] = {}
        self.velocity: dict[int, tuple[float, float]] = {}
        self._transitions: list[TrackEvent] = []
        self.firings: list[Firing] = []

    @property
    def t(self) -> float:
        return self.index / FPS

    def place(self, track_id: int, at: tuple[float, float], *, label: str = "person", still: bool = False) -> Track:
        """Put an object's feet at `at` (a new track appears if the id is new); it stops moving."""
        x, y = at
        box = (x - 4.0, y - 12.0, x + 4.0, y)
        track = self.tracks.get(track_id)
        if track is None:
            track = Track(track_id, box, self.t, self.t, {label: 0.9}, confirmed=True, best_score=0.9)
            self.tracks[track_id] = track
            self._transitions.append(TrackEvent("object_appeared", track, self.t))
        track.box, track.stationary = box, still
        self.velocity.pop(track_id, None)
        return track

    def walk(self, track_id: int, vx: float, vy: float = 0.0) -> None:
        """Keep moving the object by (vx, vy) pixels per second."""
        self.velocity[track_id] = (vx, vy)
        self.tracks[track_id].stationary = False

    def lose(self, track_id: int) -> None:
        """The tracker gives the track up (object_left on the next frame)."""
        self.velocity.pop(track_id, None)
        self._transitions.append(TrackEvent("object_left", self.tracks.pop(track_id), self.t))

    def run(self, seconds: float) -> list[Firing]:
        fired: list[Firing] = []
        for _ in range(round(seconds * FPS)):
            for track_id, (vx, vy) in self.velocity.items():
                x1, y1, x2, y2 = self.tracks[track_id].box
                self.tracks[track_id].box = (x1 + vx / FPS, y1 + vy / FPS, x2 + vx / FPS, y2 + vy / FPS)
            for track in self.tracks.values():
                track.last_seen = self.t
            frame = FrameInput(
                t=self.t,
                width=SIZE,
                height=SIZE,
                tracks=list(self.tracks.values()),
                transitions=tuple(self._transitions),
                wall=self.wall(self.t),
            )
            self._transitions.clear()
            fired += self.engine.evaluate(frame)
            self.index += 1
        self.firings += fired
        return fired


def summary(firings: list[Firing]) -> list[tuple]:
    return [(f.kind, f.rule, f.track_id, round(f.t, 2)) for f in firings]


def test_dwell_fires_once_after_dwell_s_of_one_visit():
    street = Street({"zones": [SQUARE], "rules": [{"name": "loiter", "type": "dwell", "zone": "square", "dwell_s": 8}]})
    street.place(1, OUTSIDE)
    street.run(6)
    street.place(1, INSIDE)  # t = 6.0; debounced in at 6.5, counted from 6.0
    assert street.run(7.9) == []  # 13.9: not yet 8 s
    (dwell,) = street.run(0.2)
    assert (dwell.kind, dwell.rule, dwell.zone, dwell.track_id) == ("dwell", "loiter", "square", 1)
    assert dwell.t == pytest.approx(14.0) and dwell.duration_s == pytest.approx(8.0)
    assert rule_fields(dwell) == {"rule": "loiter", "zone": "square", "duration_s": 8.0}
    assert street.run(60) == []  # still there: once per visit
    street.place(1, OUTSIDE)
    street.run(2)
    street.place(1, INSIDE)  # a new visit from 76.1
    assert summary(street.run(9)) == [("dwell", "loiter", 1, 84.1)]


def test_line_crossing_fires_only_in_its_direction():
    gate = {"name": "gate", "points": [[0.5, 0.2], [0.5, 0.8]]}
    rules = {
        "lines": [gate],
        "rules": [
            {"name": "inbound", "type": "line_crossing", "line": "gate", "direction": "left_to_right"},
            {"name": "both", "type": "line_crossing", "line": "gate"},
        ],
    }
    street = Street(rules)
    street.place(1, (20.0, 50.0))
    street.walk(1, 10.0)  # left to right, crosses x = 50 at about 3 s
    street.place(2, (80.0, 40.0))
    street.walk(2, -10.0)  # right to left: the wrong way for "inbound"
    fired = street.run(6)
    assert sorted((f.rule, f.track_id, f.direction) for f in fired) == [
        ("both", 1, "left_to_right"),
        ("both", 2, "right_to_left"),
        ("inbound", 1, "left_to_right"),
    ]
    inbound = next(f for f in fired if f.rule == "inbound")
    assert inbound.line == "gate" and inbound.zone is None and inbound.target == "gate"
    assert 2.5 <= inbound.t <= 3.5
    # the wrong way is filtered, not held back: nothing counts as suppressed
    assert street.engine.status()["rules"]["inbound"] == {"type": "line_crossing", "fired": 1, "suppressed": 0}


def test_standing_on_the_line_and_swaying_is_not_a_crossing():
    street = Street({"lines": [{"name": "gate", "points": [[0.5, 0.2], [0.5, 0.8]]}],
                     "rules": [{"name": "count", "type": "line_crossing", "line": "gate"}]})
    street.place(1, (30.0, 50.0))
    street.run(1)
    for x in (50.5, 49.6, 50.8, 49.3, 50.2):  # within the line margin (1 % of the diagonal)
        street.place(1, (x, 50.0))
        street.run(0.5)
    assert street.firings == []
    street.place(1, (70.0, 50.0))
    assert summary(street.run(0.1)) == [("line_crossing", "count", 1, 3.5)]


def test_crowding_needs_hold_s_above_and_hold_s_below_to_fire_again():
    rules = {
        "warmup_s": 0,
        "zones": [SQUARE],
        "rules": [{"name": "crowd", "type": "crowding", "zone": "square", "max_count": 2, "hold_s": 2}],
    }
    street = Street(rules)
    street.place(1, (45.0, 45.0))
    street.place(2, (55.0, 55.0))
    street.run(1)
    street.place(3, (50.0, 45.0))  # a third for 1 s: shorter than hold_s
    street.run(1)
    street.lose(3)
    street.run(3)
    assert street.firings == []
    street.place(4, (50.0, 50.0))  # t = 5.0, in at 5.5: above from 5.5, fires at 7.5
    (crowd,) = street.run(5)
    assert (crowd.kind, crowd.count, crowd.track) == ("crowding", 3, None)
    assert crowd.t == pytest.approx(7.5) and len(crowd.region) == 3
    street.lose(4)  # t = 10: below for 1 s only, then back above: still the same crowd
    street.run(1)
    street.place(5, (50.0, 50.0))
    assert street.run(5) == []
    street.lose(5)  # t = 16: below for 2 s re-arms the rule
    street.run(3)
    street.place(6, (50.0, 50.0))  # t = 19, in at 19.5, fires at 21.5
    assert summary(street.run(4)) == [("crowding", "crowd", None, 21.5)]


@pytest.mark.parametrize(
    ("window", "wall", "untrusted", "fires"),
    [
        ({"days": ["mon"], "start": "22:00", "end": "23:00"}, MONDAY_NOON_UTC, "active", False),  # 13:00 local
        ({"days": ["sat", "sun"]}, MONDAY_NOON_UTC, "active", False),
        ({"days": ["mon"], "start": "13:00", "end": "14:00"}, MONDAY_NOON_UTC, "active", True),
        ({"days": ["mon"], "start": "22:00", "end": "23:00"}, MONDAY_NOON_UTC + 9.5 * 3600, "active", True),
        ({"days": ["sun"], "start": "22:00", "end": "06:00"}, MONDAY_NOON_UTC - 8 * 3600, "active", True),  # 05:00
        ({"days": ["mon"], "start": "13:00", "end": "14:00"}, None, "inactive", False),  # clock not trusted
        ({"days": ["mon"], "start": "22:00", "end": "23:00"}, None, "active", True),
    ],
)
def test_a_schedule_holds_its_rule_back_outside_its_hours(window, wall, untrusted, fires):
    rules = {
        "timezone": "Europe/Amsterdam",
        "untrusted_clock": untrusted,
        "zones": [SQUARE],
        "rules": [{"name": "night", "type": "zone_enter", "zone": "square", "schedule": [window]}],
    }
    street = Street(rules, wall=lambda t: None if wall is None else wall + t)
    assert street.engine.uses_wall_clock
    street.place(1, OUTSIDE)
    street.run(6)
    street.place(1, INSIDE)
    fired = street.run(2)
    assert summary(fired) == ([("zone_enter", "night", 1, 6.5)] if fires else [])
    assert street.engine.status()["rules"]["night"]["suppressed"] == (0 if fires else 1)


LEFT_BEHIND = {
    "zones": [SQUARE],
    "rules": [
        {"name": "abandoned", "type": "object_left_behind", "zone": "square", "dwell_s": 10, "classes": ["car"]},
        {"name": "taken", "type": "object_removed", "zone": "square", "dwell_s": 10, "classes": ["car"]},
    ],
}


def test_left_behind_after_the_object_stands_still_then_removed_when_it_goes():
    street = Street(LEFT_BEHIND)
    street.place(1, OUTSIDE, label="car")
    street.place(2, OUTSIDE, label="person")
    street.run(6)
    street.place(1, INSIDE, label="car")  # arrives at 6.0 (in at 6.5, counted from 6.0) and moves about
    street.place(2, INSIDE, label="person")  # not a car: no rule looks at it
    street.walk(1, 0.5)
    assert street.run(14) == []  # 20 s: in the zone for 14 s, but never still
    street.place(1, (55.5, 50.0), label="car", still=True)
    (left,) = street.run(2)
    assert (left.kind, left.rule, left.track_id, left.t) == ("object_left_behind", "abandoned", 1, 20.0)
    assert left.duration_s == pytest.approx(14.0)
    assert street.run(60) == []  # once
    street.walk(1, 10.0)  # t = 82: drives off, past x = 60 at 82.4, out (debounced) at 82.9
    (gone,) = street.run(3)
    assert (gone.kind, gone.rule, gone.track_id) == ("object_removed", "taken", 1)
    assert gone.t == pytest.approx(82.9) and gone.duration_s == pytest.approx(76.4)


def test_a_car_parked_before_the_start_is_not_left_behind():
    street = Street(LEFT_BEHIND)
    street.place(1, INSIDE, label="car")  # there when the node starts (warmup_s)
    street.run(3)
    street.place(1, INSIDE, label="car", still=True)  # the tracker calls it still a few seconds later
    assert street.run(60) == []
    assert street.engine.status()["rules"]["abandoned"] == {"type": "object_left_behind", "fired": 0, "suppressed": 0}


def test_a_still_object_found_again_in_place_is_the_same_object():
    rules = {
        "stationary_memory_s": 30,
        "zones": [SQUARE],
        "rules": [
            {"name": "in", "type": "zone_enter", "zone": "square"},
            {"name": "out", "type": "zone_exit", "zone": "square"},
            *LEFT_BEHIND["rules"],
        ],
    }
    street = Street(rules)
    street.place(1, OUTSIDE, label="car")
    street.run(6)
    street.place(1, INSIDE, label="car")  # parks: moving at first (a still object never changes zone)
    street.run(2)
    street.place(1, INSIDE, label="car", still=True)
    street.run(20)
    assert [(f.rule, f.t) for f in street.firings] == [("in", 6.5), ("abandoned", 16.0)]
    street.lose(1)  # dusk: the detector loses the car, the track ends
    assert street.run(20) == []
    street.place(2, INSIDE, label="car", still=True)  # found again where it stood: not a new arrival
    assert street.run(20) == []
    assert street.engine.reidentified == 1
    street.walk(2, 10.0)  # it leaves: its exit and removal are those of the object that came at 6.0
    assert [(f.rule, f.track_id) for f in street.run(3)] == [("out", 2), ("taken", 2)]


def test_a_lost_still_object_is_given_up_after_stationary_memory_s():
    rules = {
        "stationary_memory_s": 5,
        "zones": [SQUARE],
        "rules": [{"name": "out", "type": "zone_exit", "zone": "square"}],
    }
    street = Street(rules)
    street.place(1, INSIDE, label="car", still=True)
    street.run(10)
    street.lose(1)  # t = 10.0, last seen at 9.9
    assert street.run(5) == []
    (gone,) = street.run(1)  # memory ends after 15.0
    assert (gone.kind, gone.track_id, gone.t, gone.duration_s) == ("zone_exit", 1, 15.1, 9.9)
    assert street.engine.status()["remembered_still_objects"] == 0


def test_a_one_frame_flicker_out_of_the_zone_is_not_an_exit():
    street = Street({"zones": [SQUARE], "rules": [{"name": "out", "type": "zone_exit", "zone": "square"}]})
    street.place(1, INSIDE)
    street.run(10)
    street.place(1, OUTSIDE)
    street.run(0.3)  # shorter than debounce_s
    street.place(1, INSIDE)
    assert street.run(5) == []
    street.place(1, OUTSIDE)  # t = 15.3
    assert summary(street.run(1)) == [("zone_exit", "out", 1, 15.8)]


def test_cooldown_counts_what_it_holds_back():
    rules = {
        "zones": [SQUARE],
        "rules": [{"name": "in", "type": "zone_enter", "zone": "square", "cooldown_s": 30}],
    }
    street = Street(rules)
    for track_id in (1, 2, 3):
        street.place(track_id, OUTSIDE)
    street.run(6)
    for track_id in (1, 2, 3):
        street.place(track_id, INSIDE)
        street.run(10)
    assert summary(street.firings) == [("zone_enter", "in", 1, 6.5)]
    assert street.engine.status()["rules"]["in"] == {"type": "zone_enter", "fired": 1, "suppressed": 2}


def test_a_firing_is_a_frozen_copy_with_the_rules_actions():
    rules = {
        "zones": [SQUARE],
        "outputs": [{"name": "lamp"}],
        "rules": [
            {"name": "in", "type": "zone_enter", "zone": "square", "priority": "critical", "thumbnail": False,
             "snapshot": True, "output": "lamp", "output_s": 12},
        ],
    }
    street = Street(rules)
    track = street.place(1, OUTSIDE)
    street.run(6)
    street.place(1, INSIDE)
    (firing,) = street.run(1)
    assert firing.actions.priority == "critical" and firing.actions.snapshot and not firing.actions.thumbnail
    assert (firing.actions.output, firing.actions.output_s) == ("lamp", 12)
    assert firing.track is not None and firing.track.box == (46.0, 38.0, 54.0, 50.0) and firing.track.label == "person"
    track.box = (0.0, 0.0, 1.0, 1.0)  # the tracker moves on; the firing keeps what it saw
    assert firing.track.box == (46.0, 38.0, 54.0, 50.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        firing.rule = "other"  # type: ignore[misc]


def test_update_keeps_the_state_of_unchanged_rules():
    base = {"zones": [SQUARE], "rules": [{"name": "loiter", "type": "dwell", "zone": "square", "dwell_s": 8}]}
    street = Street(base)
    street.place(1, OUTSIDE)
    street.run(6)
    street.place(1, INSIDE)
    street.run(4)
    street.engine.update({**base, "rules": [*base["rules"], {"name": "in", "type": "zone_enter", "zone": "square"}]})
    assert summary(street.run(10)) == [("dwell", "loiter", 1, 14.0)]  # timed from the real entry
    street.engine.update({**base, "enabled": False})
    street.place(2, OUTSIDE)
    street.run(1)
    street.place(2, INSIDE)
    assert street.run(20) == []


def test_the_decision_modules_reach_nothing_that_acts():
    """engine, firing and state import no emitter, spool, outputs (GPIO), privacy (audit) or control."""
    acting = ("agent.events", "agent.uplink", "agent.outputs", "agent.privacy", "agent.control", "agent.rules.dispatch",
              "agent.rules.stage")
    rules_dir = Path(__file__).resolve().parents[1] / "agent" / "rules"
    for name in ("engine.py", "firing.py", "state.py", "geometry.py", "schedule.py"):
        tree = ast.parse((rules_dir / name).read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith(acting)], name
