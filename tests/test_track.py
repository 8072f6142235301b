from __future__ import annotations

import random

from agent.capture.synthetic import PARKING_ROW, Actor, SceneOptions, SyntheticScene
from agent.detect import Detection
from agent.track import Tracker


def truth_detections(truth, rng: random.Random | None = None, miss: float = 0.0, jitter: float = 0.0):
    dets = []
    for t in truth:
        if rng is not None and rng.random() < miss:
            continue
        box = t.box
        if rng is not None and jitter:
            box = tuple(v + rng.uniform(-jitter, jitter) for v in box)
        dets.append(Detection(t.label, 0.9, box, 0))
    return dets


def run_scene(
    seed: int, frames: int, *, miss: float = 0.0, jitter: float = 0.0, tracker: Tracker | None = None
):
    scene = SyntheticScene(seed)
    tracker = tracker or Tracker()
    rng = random.Random(seed)
    events = []
    visible: dict[int, str] = {}
    for index in range(frames):
        _, truth = scene.render(index)
        for t in truth:
            visible.setdefault(t.object_id, t.label)
        events += tracker.update(truth_detections(truth, rng, miss, jitter), index / scene.fps)
    events += tracker.flush(frames / scene.fps)
    return events, visible


def test_each_object_gives_exactly_one_appeared_and_one_left():
    events, visible = run_scene(seed=5, frames=900)
    appeared = [e for e in events if e.kind == "object_appeared"]
    left = [e for e in events if e.kind == "object_left"]
    assert len(visible) >= 10
    assert len(appeared) == len(visible)
    assert len(left) == len(appeared)
    assert {e.track.track_id for e in appeared} == {e.track.track_id for e in left}


def test_tracks_survive_missed_detections_and_jitter():
    events, visible = run_scene(seed=6, frames=900, miss=0.25, jitter=2.0)
    appeared = [e for e in events if e.kind == "object_appeared"]
    # occlusions can genuinely split an object in two; missed detections alone must not multiply tracks
    assert len(visible) <= len(appeared) <= len(visible) + 2


def test_labels_follow_the_majority_of_detections():
    tracker = Tracker(confirm_hits=2)
    box = (10.0, 10.0, 50.0, 40.0)
    for i, label in enumerate(["car", "truck", "car", "car"]):
        tracker.update([Detection(label, 0.8, box, 0)], i * 0.1)
    assert tracker.tracks[0].label == "car"


def test_parked_car_does_not_retrigger_when_light_changes():
    """A parked car (the scene's actor 1) stops being detected for a minute at dusk, then again."""
    parked = Actor(1, "car", 0, 470.0, PARKING_ROW, 0.0, 128.0, ((40, 40, 200),))
    scene = SyntheticScene(seed=2, options=SceneOptions(actors=[parked]))
    tracker = Tracker(stationary_after_s=5.0, stationary_max_missed_s=300.0)
    events = []
    for index in range(0, 3000):  # 5 minutes at 10 fps
        _, truth = scene.render(index)
        t = index / scene.fps
        dark = 60 <= t < 120 or 150 <= t < 250  # headlights/dusk: the detector loses the car
        dets = [] if dark else truth_detections(truth)
        events += tracker.update(dets, t)
    assert [e.kind for e in events] == ["object_appeared"]
    assert tracker.tracks[0].stationary


def test_moving_object_ends_after_max_missed():
    tracker = Tracker(confirm_hits=1, max_missed_s=1.0)
    tracker.update([Detection("person", 0.9, (0, 0, 10, 30), 0)], 0.0)
    assert tracker.expire(0.9) == []
    ended = tracker.expire(1.1)
    assert [e.kind for e in ended] == ["object_left"]


def test_tentative_tracks_end_silently():
    tracker = Tracker(confirm_hits=3)
    events = tracker.update([Detection("person", 0.5, (0, 0, 10, 30), 0)], 0.0)
    events += tracker.expire(5.0)
    assert events == []
