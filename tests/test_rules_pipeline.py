"""Rules in the real pipeline: shipped detector (onnxruntime), motion gate, tracker, spool.

The parked-car scenarios darken the scene until the detector loses the car for most of a minute
(what dusk, headlights and shadows do to a real detector) and brighten it again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.capture.base import Frame
from agent.capture.synthetic import LANES, PARKING_ROW, Actor, SceneOptions, SyntheticScene
from agent.clock import Clock
from agent.config.rules import RulesConfig
from agent.config.schema import EventsConfig, MotionConfig
from agent.detect import load_detector
from agent.events import EventEmitter, EventFactory
from agent.motion import MotionGate
from agent.pipeline import Pipeline
from agent.rules import RulesHandler
from agent.track import Tracker
from agent.uplink.spool import Spool
from tests.conftest import DEFAULT_MODEL

FPS = 5.0
BAY = {"name": "bay", "polygon": [[0.3, 0.8], [0.7, 0.8], [0.7, 0.9], [0.3, 0.9]]}
PARKED = Actor(1, "car", 0, 250.0, PARKING_ROW, 0.0, 120.0, ((40, 40, 200),))


def dusk_and_dawn(t: float) -> float:
    """Full light, 30 s of dusk down to 8 %, 40 s of night, 30 s of dawn."""
    if t < 20:
        return 1.0
    if t < 50:
        return 1.0 - 0.92 * (t - 20) / 30
    if t < 90:
        return 0.08
    if t < 120:
        return 0.08 + 0.92 * (t - 90) / 30
    return 1.0


PARKING_RULES = {
    "zones": [BAY],
    "lines": [{"name": "kerb", "points": [[0.5, 0.78], [0.5, 0.95]]}],
    "rules": [
        {"name": "arrivals", "type": "zone_enter", "zone": "bay"},
        {"name": "departures", "type": "zone_exit", "zone": "bay"},
        {"name": "abandoned", "type": "object_left_behind", "zone": "bay", "dwell_s": 15},
        {"name": "taken", "type": "object_removed", "zone": "bay", "dwell_s": 15},
        {"name": "long stay", "type": "dwell", "zone": "bay", "dwell_s": 600},
        {"name": "through", "type": "line_crossing", "line": "kerb"},
    ],
}


class Run:
    def __init__(self, tmp_path: Path, rules: dict, options: SceneOptions, tracker: Tracker) -> None:
        self.spool = Spool(tmp_path / "spool").start()
        self.records: list[dict] = []
        self.spool.add_listener(lambda recs: self.records.extend(json.loads(r.payload) for r in recs if r.is_json))
        detector = load_detector(DEFAULT_MODEL)
        factory = EventFactory("rules-e2e", Clock(), detector.info)
        self.pipeline = Pipeline(
            detector=detector,
            gate=MotionGate(MotionConfig()),
            tracker=tracker,
            factory=factory,
            emitter=EventEmitter(self.spool),
            events_cfg=EventsConfig(),
        )
        self.rules = RulesHandler.create(
            RulesConfig.model_validate(rules),
            emit=self.pipeline.emitter.emit,
            factory=factory,
            thumbnailer=lambda: self.pipeline.thumbnailer,
        )
        self.pipeline.track_handlers.append(self.rules)
        self.scene = SyntheticScene(11, FPS, options)

    def play(self, seconds: float) -> list[dict]:
        try:
            for index in range(round(seconds * FPS)):
                image, _ = self.scene.render(index)
                self.pipeline.process(Frame(image=image, index=index, t=index / FPS, mono=time.monotonic()))
            assert self.spool.flush(10.0)
        finally:
            self.spool.stop()
        return self.records


def test_parked_car_through_dusk_and_dawn_fires_no_rule(tmp_path, event_validator):
    run = Run(tmp_path, PARKING_RULES, SceneOptions(actors=[PARKED], light=dusk_and_dawn), Tracker())
    records = run.play(140)
    assert [r["type"] for r in records] == ["object_appeared"]  # the tracker kept the car all night
    for record in records:
        event_validator.validate(record)
    assert run.pipeline.detector.frames > 20


def test_a_lost_and_found_parked_car_is_the_same_object(tmp_path):
    """With a short tracker memory the track ends in the dark; the rules still recognise the car."""
    tracker = Tracker(stationary_after_s=5.0, stationary_max_missed_s=15.0)
    run = Run(tmp_path, PARKING_RULES, SceneOptions(actors=[PARKED], light=dusk_and_dawn), tracker)
    records = run.play(140)
    kinds = [r["type"] for r in records]
    assert [k for k in kinds if k not in ("object_appeared", "object_left")] == []
    assert kinds.count("object_appeared") == 2  # the tracker's own view: lost once, found again
    assert run.rules.engine.reidentified == 1


def test_a_car_that_really_parks_is_reported_once_and_passing_traffic_is_not(tmp_path, event_validator):
    lane_bottom, direction = LANES[1]
    traffic = [
        Actor(10 + i, "car", 40 + 60 * i, -130.0, lane_bottom, 9.0 * direction, 115.0, ((200, 60, 40),))
        for i in range(2)
    ]
    arriving = Actor(5, "car", 300, -130.0, PARKING_ROW, 8.0, 110.0, ((30, 160, 60),), stop=(330, 2000))
    rules = {**PARKING_RULES, "zones": [{"name": "bay", "polygon": [[0.0, 0.8], [0.35, 0.8], [0.35, 0.9], [0.0, 0.9]]}]}
    rules["rules"] = [r for r in rules["rules"] if r["type"] != "line_crossing"]
    run = Run(tmp_path, rules, SceneOptions(actors=[*traffic, arriving]), Tracker())
    records = run.play(120)
    rule_events = [(r["type"], r["rule"]) for r in records if "rule" in r]
    assert rule_events == [("zone_enter", "arrivals"), ("object_left_behind", "abandoned")]
    for record in records:
        event_validator.validate(record)
    left = next(r for r in records if r["type"] == "object_left_behind")
    assert left["zone"] == "bay" and left["label"] == "car" and left["thumb"]["bytes"] > 0
