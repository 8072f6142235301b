"""Rules on the synthetic street with scripted actors: exactly the expected events, nothing more.

Most scenarios feed the tracker the scene's ground truth (deterministic and fast); the light-ramp
scenarios run the real pipeline with the shipped detector, where darkness really loses the car.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.capture.base import Frame
from agent.capture.synthetic import NEAR_PAVEMENT_FEET, PARKING_ROW, Actor, SceneOptions, SyntheticScene
from agent.clock import Clock
from agent.config import ConfigError
from agent.config.rules import OutputConfig, RulesConfig, TimeWindow
from agent.detect import Detection
from agent.events import EventFactory
from agent.events.thumbs import CropThumbnailer
from agent.outputs import LogOutput, OutputBank, open_output
from agent.privacy.audit import AuditLog
from agent.rules import RulesHandler
from agent.rules.schedule import Schedule
from agent.track import Tracker

MONDAY_NOON_UTC = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
FEET = 335.0  # near pavement
PERSON = ((200, 60, 40), (40, 40, 40), (120, 160, 210))
CAR = ((40, 40, 200),)
assert NEAR_PAVEMENT_FEET[0] <= FEET <= NEAR_PAVEMENT_FEET[1]


def walker(object_id: int, start: int, x0: float, vx: float, **kw) -> Actor:
    return Actor(object_id, "person", start, x0, FEET, vx, 70.0, PERSON, **kw)


class Harness:
    """Scene → ground-truth detections → tracker → rules (engine and dispatcher), recording each event with
    its stream time."""

    def __init__(
        self,
        rules: dict,
        actors: list[Actor],
        *,
        fps: float = 10.0,
        wall=None,
        clock_trusted: bool = True,
        outputs=None,
        audit=None,
        tracker: Tracker | None = None,
        emit=None,
    ) -> None:
        self.fps = fps
        self.scene = SyntheticScene(0, fps, SceneOptions(actors=actors, noise_sigma=0.0))
        self.tracker = tracker or Tracker()
        self.events: list[tuple[float, dict, object]] = []
        self.t = 0.0
        factory = EventFactory("test-node", Clock(), lambda: {"name": "truth", "sha256": "0" * 64})
        wall = wall or (lambda frame: MONDAY_NOON_UTC + frame.t)
        self.handler = RulesHandler.create(
            RulesConfig.model_validate(rules),
            emit=emit or self._emit,
            factory=factory,
            thumbnailer=lambda: CropThumbnailer(),
            outputs=outputs,
            audit=audit,
            wall=lambda frame: wall(frame) if clock_trusted else None,
        )
        self.index = 0

    def _emit(self, body, thumb) -> bool:
        self.events.append((self.t, body, thumb))
        return True

    def run(self, seconds: float) -> Harness:
        for _ in range(round(seconds * self.fps)):
            image, truth = self.scene.render(self.index)
            self.t = self.index / self.fps
            frame = Frame(image=image, index=self.index, t=self.t, mono=self.t)
            detections = [Detection(tb.label, 0.9, tb.box, 0) for tb in truth or []]
            transitions = self.tracker.update(detections, self.t)
            self.handler(frame, transitions, self.tracker)
            self.index += 1
        return self

    def types(self) -> list[str]:
        return [body["type"] for _, body, _ in self.events]


CROSSING_LINE = {"name": "gate", "points": [[0.5, 0.7], [0.5, 1.0]]}
ZONE = {"name": "bench", "polygon": [[0.4, 0.85], [0.6, 0.85], [0.6, 1.0], [0.4, 1.0]]}


def test_one_crossing_is_one_event_with_the_right_direction(event_validator):
    rules = {
        "lines": [CROSSING_LINE],
        "rules": [{"name": "count", "type": "line_crossing", "line": "gate"}],
    }
    right = walker(1, 30, -20.0, 3.0)  # crosses x=320 at about frame 143
    left = walker(2, 300, 660.0, -3.0)
    h = Harness(rules, [right, left]).run(55)
    crossings = [(t, b) for t, b, _ in h.events]
    assert [b["direction"] for _, b in crossings] == ["left_to_right", "right_to_left"]
    assert [b["track"] for _, b in crossings] == [1, 2]
    assert all(b["rule"] == "count" and b["zone"] == "gate" and b["label"] == "person" for _, b in crossings)
    assert 14.0 <= crossings[0][0] <= 15.0
    for _, body, thumb in h.events:
        assert thumb is not None
        event_validator.validate({**body, "id": "0190f5c2-0000-7000-8000-000000000000", "seq": 1})


def test_direction_filter_and_jitter_on_the_line():
    """A person who stops on the line and sways does not count twice; direction filters apply."""
    rules = {
        "lines": [CROSSING_LINE],
        "rules": [{"name": "in", "type": "line_crossing", "line": "gate", "direction": "right_to_left"}],
    }
    stopper = walker(1, 0, 200.0, 3.0, stop=(40, 80))  # stands at x=320, on the line, for 8 s
    returning = walker(2, 200, 660.0, -3.0)
    h = Harness(rules, [stopper, returning]).run(40)
    assert [(b["direction"], b["track"]) for _, b, _ in h.events] == [("right_to_left", 2)]


def test_enter_and_exit_once_per_visit_with_the_time_inside():
    rules = {
        "zones": [ZONE],
        "rules": [
            {"name": "in", "type": "zone_enter", "zone": "bench", "classes": ["person"]},
            {"name": "out", "type": "zone_exit", "zone": "bench"},
            {"name": "cars only", "type": "zone_enter", "zone": "bench", "classes": ["car"]},
        ],
    }
    h = Harness(rules, [walker(1, 60, -20.0, 4.0)]).run(30)
    assert h.types() == ["zone_enter", "zone_exit"]
    (t_in, enter, _), (t_out, exit_, _) = h.events
    assert enter["rule"] == "in" and exit_["rule"] == "out" and enter["zone"] == exit_["zone"] == "bench"
    # the zone is 128 px wide at 4 px/frame: 32 frames = 3.2 s inside
    assert exit_["duration_s"] == pytest.approx(3.2, abs=0.3)
    assert t_out - t_in == pytest.approx(3.2, abs=0.3)


def test_dwell_fires_once_after_t():
    rules = {
        "zones": [ZONE],
        "rules": [{"name": "loitering", "type": "dwell", "zone": "bench", "dwell_s": 8}],
    }
    # walks in, stands 20 s inside the zone, walks on; a second visitor passes quickly
    loiterer = walker(1, 60, -20.0, 4.0, stop=(130, 200))
    passer = walker(2, 500, -20.0, 4.0)
    h = Harness(rules, [loiterer, passer]).run(70)
    assert h.types() == ["dwell"]
    t, body, _ = h.events[0]
    entered = (0.4 * 640 + 20) / 4 / 10 + 6  # enters the zone about 12.9 s into the run
    assert t == pytest.approx(entered + 8 + 0.5, abs=0.6)  # + debounce
    assert body["duration_s"] >= 8 and body["track"] == 1


def test_schedule_off_means_nothing_and_on_means_events():
    scene = [walker(1, 60, -20.0, 4.0)]

    def rules(window: dict) -> dict:
        return {
            "timezone": "Europe/Amsterdam",
            "zones": [ZONE],
            "rules": [{"name": "night", "type": "zone_enter", "zone": "bench", "schedule": [window]}],
        }

    # Monday 12:00 UTC is 13:00 in Amsterdam (CET)
    assert Harness(rules({"days": ["sat", "sun"]}), scene).run(30).types() == []
    assert Harness(rules({"start": "22:00", "end": "06:00"}), scene).run(30).types() == []
    assert Harness(rules({"days": ["mon"], "start": "13:00", "end": "14:00"}), scene).run(30).types() == [
        "zone_enter"
    ]
    # no trusted clock (no NTP/GNSS yet): scheduled rules follow rules.untrusted_clock
    quiet = {**rules({"days": ["mon"], "start": "13:00", "end": "14:00"}), "untrusted_clock": "inactive"}
    assert Harness(quiet, scene, clock_trusted=False).run(30).types() == []


def test_schedule_windows_past_midnight_belong_to_their_start_day():
    windows = [TimeWindow(days=["fri"], start="22:00", end="06:00")]
    schedule = Schedule(windows, "Europe/Amsterdam")
    at = lambda text: datetime.fromisoformat(text).timestamp()  # noqa: E731
    assert schedule.active(at("2026-11-27T22:30:00+01:00"))  # Friday night
    assert schedule.active(at("2026-11-28T05:59:00+01:00"))  # Saturday early morning
    assert not schedule.active(at("2026-11-28T22:30:00+01:00"))  # Saturday night
    assert not schedule.active(at("2026-11-27T05:00:00+01:00"))  # Friday early (Thursday's window)


def test_cooldown_limits_a_rule_not_the_others():
    rules = {
        "lines": [CROSSING_LINE],
        "rules": [
            {"name": "calm", "type": "line_crossing", "line": "gate", "cooldown_s": 60},
            {"name": "every", "type": "line_crossing", "line": "gate"},
        ],
    }
    people = [walker(i, 20 * i, -20.0, 4.0) for i in range(1, 4)]
    h = Harness(rules, people).run(25)
    fired = [b["rule"] for _, b, _ in h.events]
    assert fired.count("calm") == 1 and fired.count("every") == 3
    assert h.handler.status()["rules"]["calm"]["suppressed"] == 2


def test_crowding_fires_once_when_the_count_stays_above():
    zone = {"name": "stop", "polygon": [[0.2, 0.85], [0.8, 0.85], [0.8, 1.0], [0.2, 1.0]]}
    rules = {
        "zones": [zone],
        "rules": [{"name": "crowd", "type": "crowding", "zone": "stop", "max_count": 2, "hold_s": 1}],
    }
    # three people gather at the stop (standing 15 s), leave, and gather again later
    people = [walker(i, 60 + 10 * i, -20.0, 4.0, stop=(120 + 10 * i, 150)) for i in range(1, 4)]
    people += [walker(10 + i, 450 + 10 * i, -20.0, 4.0, stop=(510 + 10 * i, 100)) for i in range(3)]
    h = Harness(rules, people).run(75)
    assert h.types() == ["crowding", "crowding"]
    assert [b["count"] for _, b, _ in h.events] == [3, 3]
    assert all(b["rule"] == "crowd" and "bbox" in b for _, b, _ in h.events)


def _parking_rules(**extra) -> dict:
    bay = {"name": "bay", "polygon": [[0.25, 0.7], [0.75, 0.7], [0.75, 0.95], [0.25, 0.95]]}
    return {
        "zones": [bay],
        "rules": [
            {"name": "abandoned", "type": "object_left_behind", "zone": "bay", "dwell_s": 20, "classes": ["car"]},
            {"name": "taken", "type": "object_removed", "zone": "bay", "dwell_s": 20, "classes": ["car"]},
        ],
        **extra,
    }


def test_object_left_behind_and_removed():
    # a car pulls into the bay, stays 60 s, drives off
    car = Actor(1, "car", 50, -130.0, PARKING_ROW, 8.0, 120.0, CAR, stop=(98, 600))
    h = Harness(_parking_rules(), [car]).run(90)
    assert h.types() == ["object_left_behind", "object_removed"]
    (t_left, _, _), (t_gone, gone, _) = h.events
    assert 27 <= t_left <= 29  # in the bay from 7.9 s, parked at 9.8 s: 20 s in the bay and still
    assert 71 <= t_gone <= 73.5 and gone["duration_s"] >= 60  # drives off at 69.8 s, out at ~72 s


def test_objects_present_at_start_do_not_enter_or_get_left_behind():
    parked = Actor(1, "car", 0, 250.0, PARKING_ROW, 0.0, 120.0, CAR)
    rules = _parking_rules()
    rules["rules"].append({"name": "arrivals", "type": "zone_enter", "zone": "bay"})
    h = Harness(rules, [parked]).run(60)
    assert h.types() == []


def test_live_update_keeps_state_of_unchanged_rules_and_refuses_bad_sets(tmp_path: Path):
    audit = AuditLog(tmp_path / "audit")
    base = {"zones": [ZONE], "rules": [{"name": "loitering", "type": "dwell", "zone": "bench", "dwell_s": 8}]}
    loiterer = walker(1, 60, -20.0, 4.0, stop=(130, 200))
    h = Harness(base, [loiterer], audit=audit).run(16)  # inside for ~3 s
    bad = {**base, "rules": [{"name": "x", "type": "dwell", "zone": "nowhere"}]}
    with pytest.raises(ConfigError) as err:
        h.handler.update(bad, actor="test")
    assert "nowhere" in str(err.value) and err.value.issues[0].path.startswith("rules")
    added = {
        **base,
        "lines": [CROSSING_LINE],
        "rules": [*base["rules"], {"name": "count", "type": "line_crossing", "line": "gate"}],
    }
    h.handler.update(added, actor="mqtt:cmd/config/set req=7")
    h.run(30)
    assert h.types() == ["dwell", "line_crossing"]  # dwell still once, timed from the real entry
    assert h.events[0][0] == pytest.approx(21.4, abs=0.6)
    entry = [e for e in audit.entries() if e["action"] == "rules.update"]
    assert len(entry) == 1 and entry[0]["actor"] == "mqtt:cmd/config/set req=7"
    assert entry[0]["details"]["rules"]["added"] == ["count"] and entry[0]["details"]["lines"]["added"] == ["gate"]
    assert audit.verify() == []


def test_validation_names_the_problem():
    with pytest.raises(ValueError, match=r"not in rules\.lines"):
        RulesConfig.model_validate({"rules": [{"name": "c", "type": "line_crossing", "line": "gate"}]})
    with pytest.raises(ValueError, match="crossed left_to_right or right_to_left"):
        RulesConfig.model_validate(
            {
                "lines": [CROSSING_LINE],
                "rules": [{"name": "c", "type": "line_crossing", "line": "gate", "direction": "top_to_bottom"}],
            }
        )
    with pytest.raises(ValueError, match="unknown IANA time zone"):
        RulesConfig.model_validate({"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="outside the frame"):
        RulesConfig.model_validate({"zones": [{"name": "z", "polygon": [[0, 0], [1.5, 0], [1, 1]]}]})
    with pytest.raises(ValueError, match="needs `pin`"):
        OutputConfig(name="relay", kind="gpio")


class RecordingOutput(LogOutput):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.history: list[bool] = []
        self.off = threading.Event()

    def set(self, active: bool) -> None:
        super().set(active)
        self.history.append(active)
        if not active:
            self.off.set()


def test_actions_drive_an_output_and_request_a_snapshot(tmp_path: Path):
    made: dict[str, RecordingOutput] = {}

    def opener(cfg):
        made[cfg.name] = RecordingOutput(cfg.name)
        return made[cfg.name]

    rules = {
        "lines": [CROSSING_LINE],
        "outputs": [{"name": "lamp"}],
        "rules": [
            {
                "name": "alarm",
                "type": "line_crossing",
                "line": "gate",
                "priority": "critical",
                "thumbnail": False,
                "snapshot": True,
                "output": "lamp",
                "output_s": 0.05,
            }
        ],
    }
    bank = OutputBank(RulesConfig.model_validate(rules).outputs, opener=opener).start()
    audit = AuditLog(tmp_path / "audit")
    h = Harness(rules, [walker(1, 0, 250.0, 4.0)], outputs=bank, audit=audit)
    requests = []
    h.handler.on_snapshot = requests.append
    try:
        h.run(5)
        assert made["lamp"].off.wait(5.0)
    finally:
        bank.stop()
    (_, body, thumb), = h.events
    assert body["priority"] == "critical" and thumb is None
    assert made["lamp"].history[:2] == [True, False]
    (request,) = requests
    assert request.rule == "alarm" and request.track == 1 and request.frame.image.shape == (360, 640, 3)
    (entry,) = [e for e in audit.entries() if e["action"] == "snapshot.request"]
    assert entry["actor"] == "rule:alarm" and entry["details"]["handled"] is True


def test_gpio_output_without_gpio_is_log_only(caplog):
    output = open_output(OutputConfig(name="siren", kind="gpio", pin=17))
    assert isinstance(output, LogOutput)
    assert "no usable GPIO" in caplog.text


def test_a_failing_action_does_not_stop_the_analysis_loop():
    rules = {"lines": [CROSSING_LINE], "rules": [{"name": "count", "type": "line_crossing", "line": "gate"}]}

    def broken(body, thumb):
        raise OSError("disk full")

    h = Harness(rules, [walker(1, 0, 250.0, 4.0), walker(2, 40, 250.0, 4.0)], emit=broken)
    h.run(12)  # no exception escapes
    assert h.handler.status()["errors"] == 2
