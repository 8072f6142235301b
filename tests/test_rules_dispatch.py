"""The dispatcher alone: firings in, events, output pulses, snapshot requests and audit entries out.

Real event factory, thumbnailer and audit log; the outputs are a recording stand-in (the real
OutputBank is driven end to end in test_rules.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from agent.capture.base import Frame
from agent.clock import Clock
from agent.events import EventFactory
from agent.events.thumbs import CropThumbnailer, Thumbnail
from agent.privacy.audit import AuditLog
from agent.rules import Actions, Firing, FiringTrack, RuleDispatcher, SnapshotRequest
from agent.track import Track

WIDTH, HEIGHT = 640, 360
WALKER = FiringTrack(track_id=7, label="person", score=0.875, box=(100.0, 90.0, 160.0, 270.0), first_seen=2.0,
                     last_seen=9.5)


class Pulses:
    def __init__(self) -> None:
        self.pulses: list[tuple[str, float]] = []

    def pulse(self, name: str, seconds: float) -> bool:
        self.pulses.append((name, seconds))
        return True


class Sent:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple[dict, Thumbnail | None]] = []
        self.fail = fail

    def __call__(self, body: dict, thumb: Thumbnail | None) -> bool:
        if self.fail:
            raise OSError("No space left on device")
        self.events.append((body, thumb))
        return True


def frame(t: float = 10.0) -> Frame:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return Frame(image=image, index=int(t * 10), t=t, mono=t)


CROPS = CropThumbnailer()


def dispatcher(sent: Sent, tmp_path: Path, thumbnailer=CROPS) -> tuple[RuleDispatcher, Pulses, AuditLog]:
    pulses, audit = Pulses(), AuditLog(tmp_path / "audit")
    factory = EventFactory("test-node", Clock(), lambda: {"name": "truth", "sha256": "0" * 64})
    made = RuleDispatcher(emit=sent, factory=factory, thumbnailer=lambda: thumbnailer, outputs=pulses, audit=audit)
    return made, pulses, audit


def test_a_firing_becomes_one_event_with_its_fields_and_a_thumbnail(tmp_path, event_validator):
    sent = Sent()
    rules, pulses, audit = dispatcher(sent, tmp_path)
    dwell = Firing("loiter", "dwell", 10.0, Actions(), zone="bench", track=WALKER, duration_s=8.0)
    rules.dispatch([dwell], frame(), [WALKER.as_track()])
    ((body, thumb),) = sent.events
    assert body["type"] == "dwell" and body["rule"] == "loiter" and body["zone"] == "bench"
    assert body["duration_s"] == 8.0 and body["track"] == 7 and body["label"] == "person"
    assert body["bbox"] == [0.1562, 0.25, 0.25, 0.75] and body["priority"] == "normal"
    assert thumb is not None and thumb.width > 0
    event_validator.validate({**body, "thumb": thumb.meta(), "id": "0190f5c2-0000-7000-8000-000000000000", "seq": 1})
    assert pulses.pulses == [] and list(audit.entries()) == []
    assert rules.status() == {"events": 1, "snapshot_requests": 0, "errors": 0}


def test_a_crowd_gets_the_box_around_the_group_and_no_thumbnail_when_that_is_most_of_the_frame(tmp_path):
    sent = Sent()
    rules, _, _ = dispatcher(sent, tmp_path)
    group = ((64.0, 36.0, 128.0, 180.0), (192.0, 72.0, 256.0, 216.0))
    everyone = ((0.0, 0.0, 320.0, 200.0), (300.0, 150.0, 640.0, 360.0))
    rules.dispatch(
        [
            Firing("crowd", "crowding", 10.0, Actions(), zone="stop", region=group, count=2),
            Firing("crowd", "crowding", 10.0, Actions(), zone="stop", region=everyone, count=2),
        ],
        frame(),
        [],
    )
    (small, small_thumb), (big, big_thumb) = sent.events
    assert small["bbox"] == [0.1, 0.1, 0.4, 0.6] and small["count"] == 2 and "track" not in small
    assert small_thumb is not None
    assert big["bbox"] == [0.0, 0.0, 1.0, 1.0] and big_thumb is None  # full frames leave only as snapshots


def test_actions_pulse_the_output_and_request_an_audited_snapshot(tmp_path):
    sent = Sent()
    rules, pulses, audit = dispatcher(sent, tmp_path)
    requests: list[SnapshotRequest] = []
    rules.on_snapshot = requests.append
    alarm = Actions(priority="critical", thumbnail=False, snapshot=True, output="siren", output_s=30.0)
    rules.dispatch([Firing("gate", "line_crossing", 12.5, alarm, line="fence", track=WALKER,
                           direction="left_to_right")], frame(12.5), [])
    ((body, thumb),) = sent.events
    assert body["priority"] == "critical" and body["direction"] == "left_to_right" and body["zone"] == "fence"
    assert thumb is None
    assert pulses.pulses == [("siren", 30.0)]
    (request,) = requests
    assert (request.rule, request.zone, request.event_type, request.track, request.t) == (
        "gate", "fence", "line_crossing", 7, 12.5
    )
    assert request.frame.image.shape == (HEIGHT, WIDTH, 3)
    (entry,) = audit.entries()
    assert entry["action"] == "snapshot.request" and entry["actor"] == "rule:gate"
    assert entry["details"] == {"event": "line_crossing", "zone": "fence", "track": 7, "handled": True}
    assert audit.verify() == []


def test_without_a_snapshot_handler_the_request_is_audited_as_unhandled_and_warned_once(tmp_path, caplog):
    rules, _, audit = dispatcher(Sent(), tmp_path)
    ask = Firing("night", "zone_enter", 3.0, Actions(snapshot=True), zone="yard", track=WALKER)
    with caplog.at_level(logging.WARNING, logger="agent.rules.dispatch"):
        rules.dispatch([ask, ask], frame(3.0), [])
    assert [e["details"]["handled"] for e in audit.entries()] == [False, False]
    assert caplog.text.count("no snapshot handler is installed") == 1
    assert rules.status()["snapshot_requests"] == 2


def test_a_lost_event_does_not_silence_the_output_or_the_snapshot(tmp_path):
    rules, pulses, audit = dispatcher(Sent(fail=True), tmp_path)
    requests: list[SnapshotRequest] = []
    rules.on_snapshot = requests.append
    act = Actions(snapshot=True, output="lamp", output_s=5.0)
    rules.dispatch([Firing("in", "zone_enter", 4.0, act, zone="yard", track=WALKER)], frame(4.0), [])
    assert pulses.pulses == [("lamp", 5.0)] and len(requests) == 1 and len(list(audit.entries())) == 1
    assert rules.status() == {"events": 0, "snapshot_requests": 1, "errors": 1}


def test_the_thumbnailer_sees_every_tracked_object_for_redaction(tmp_path):
    seen: list[list] = []

    def thumbnailer(frame: Frame, box, objects) -> Thumbnail | None:
        seen.append(list(objects))
        return None

    sent = Sent()
    rules, _, _ = dispatcher(sent, tmp_path, thumbnailer)
    passer = Track(3, (320.0, 0.0, 384.0, 180.0), 0.0, 1.0, {"person": 0.7}, confirmed=True, best_score=0.7)
    two = [Firing("in", "zone_enter", 1.0, Actions(), zone="yard", track=WALKER)] * 2
    rules.dispatch(two, frame(1.0), [WALKER.as_track(), passer])
    assert seen == [[("person", (0.1562, 0.25, 0.25, 0.75)), ("person", (0.5, 0.0, 0.6, 0.5))]] * 2
    assert len(sent.events) == 2


@pytest.mark.parametrize(("rule_wants", "node_makes", "attached"), [(True, True, True), (False, True, False),
                                                                    (True, False, False)])
def test_a_thumbnail_needs_the_rule_to_want_it_and_the_node_to_make_them(tmp_path, rule_wants, node_makes, attached):
    sent = Sent()
    rules, _, _ = dispatcher(sent, tmp_path, CROPS if node_makes else None)  # None: events.thumbnails off
    firing = Firing("in", "zone_enter", 1.0, Actions(thumbnail=rule_wants), zone="yard", track=WALKER)
    rules.dispatch([firing], frame(1.0), [])
    ((body, thumb),) = sent.events
    assert (thumb is not None) == attached and body["type"] == "zone_enter"
