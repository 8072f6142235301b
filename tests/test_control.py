"""The control plane end to end: a real agent (synthetic scene, shipped detector, spool, MQTT publisher),
a real Mosquitto, and an operator client sending commands and reading replies on cmd_result."""

from __future__ import annotations

import json
import time
import tomllib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import rfc3339
from agent.config.loader import redact_secrets
from agent.control.protocol import CommandError, parse_request
from tests.agent_harness import AgentHarness, Operator

MASK = {"name": "garden", "polygon": [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4], [0.0, 0.4]]}


@pytest.fixture(scope="module")
def node(module_broker, tmp_path_factory):
    """One agent for the tests that leave it as they found it (or check only what they changed)."""
    state = tmp_path_factory.mktemp("node") / "state"
    with AgentHarness(state, broker=module_broker.url, trusted_clock=True) as harness:
        yield harness


@pytest.fixture(scope="module")
def operator(module_broker, node):
    op = Operator(module_broker.url)
    yield op
    op.close()


def config_dump(harness: AgentHarness) -> dict:
    return harness.agent.config.model_dump(mode="json")


def audit_entries(harness: AgentHarness) -> list[dict]:
    return list(harness.stage("health").privacy.audit.entries())


# -- the happy paths ----------------------------------------------------------------------------------
def test_ping_replies_with_the_same_id(operator):
    reply = operator.request("ping", id="op-ping-1")
    assert reply["id"] == "op-ping-1" and reply["status"] == "ok" and reply["command"] == "ping"
    assert reply["message"] == "pong" and reply["node"] == "node-1" and reply["data"]["uptime_s"] >= 0


def test_status_is_the_full_state(operator, node):
    data = operator.request("status")["data"]
    assert data["node"] == "node-1" and data["versions"]["model"] == "vigil-synth"
    assert len(data["versions"]["model_sha256"]) == 64
    assert data["capture"]["frames_read"] > 0 and data["pipeline"]["frames"] > 0
    assert {"uplink", "health", "control", "privacy", "rules", "web"} <= set(data["stages"])
    assert data["stages"]["uplink"]["connected"] is True
    assert data["stages"]["health"]["camera"]["state"] == "ok"
    assert set(data["spool"]["classes"]) == {"critical", "event", "thumb", "telemetry"}


def test_config_get_all_or_some_keys(operator):
    everything = operator.request("config/get")["data"]
    assert (
        everything["config"]["node"]["id"] == "node-1" and "detect.score_threshold" in everything["tunable"]
    )
    some = operator.request("config/get", {"keys": ["detect.classes", "motion.enabled"]})["data"]["config"]
    assert some == {"detect.classes": everything["config"]["detect"]["classes"], "motion.enabled": True}
    missing = operator.request("config/get", {"keys": ["detect.nope"]})
    assert missing["status"] == "error" and "detect.nope" in missing["message"]


def test_secrets_never_leave_in_config_get():
    shown = redact_secrets(
        {
            "uplink": {"password": "hunter2", "password_file": None},
            "http": {"token": "x" * 20},
            "modem": {"pin": "1234", "port": "/dev/vigil-at"},
        }
    )
    assert shown == {
        "uplink": {"password": "***", "password_file": None},
        "http": {"token": "***"},
        "modem": {"pin": "***", "port": "/dev/vigil-at"},
    }


def test_config_set_applies_live_persists_and_audits(operator, node):
    detector = node.running.pipeline.detector
    values = {"detect.score_threshold": 0.55, "motion.keyframe_interval_s": 3}
    reply = operator.request("config/set", {"values": values}, actor="backoffice/alice")
    assert reply["status"] == "ok", reply
    assert set(reply["data"]["changed"]) == {"detect.score_threshold", "motion.keyframe_interval_s"}
    assert detector.score_threshold == 0.55  # the running detector, not just the config object
    assert node.running.pipeline.gate.cfg.keyframe_interval_s == 3
    overlay = node.running.state_dir / "config-overlay.toml"
    assert reply["data"]["persisted_to"] == str(overlay)
    kept = tomllib.loads(overlay.read_text())["set"]
    assert kept["detect.score_threshold"] == 0.55 and kept["motion.keyframe_interval_s"] == 3
    change = [e for e in audit_entries(node) if e["action"] == "config.change"][-1]
    assert (
        "backoffice/alice" in change["actor"]
        and change["details"]["values"]["detect.score_threshold"] == 0.55
    )
    assert (
        operator.request("config/set", {"values": {"detect.score_threshold": 0.55}})["data"]["changed"] == []
    )


def test_config_set_refuses_invalid_values_and_changes_nothing(operator, node):
    before = config_dump(node)
    threshold = node.running.pipeline.detector.score_threshold
    for values, expected in (
        ({"detect.score_threshold": 2.0}, "detect.score_threshold"),
        ({"detect.score_threshold": 0.3, "motion.pixel_threshold": "high"}, "motion.pixel_threshold"),
        ({"node.id": "other"}, "not tunable"),
        ({"uplink.broker": "mqtt://evil:1883"}, "not tunable"),
        ({"tamper.enabled": False}, "not tunable"),
        ({"rules": {"zones": [{"name": "z", "polygon": [[0, 0], [1, 1]]}]}}, "rules.zones"),
        ({"detect.nope": 1}, "detect.nope"),
        ({"detect.classes": ["person", "persn"]}, "has no class 'persn'"),
    ):
        reply = operator.request("config/set", {"values": values})
        assert reply["status"] == "error" and expected in reply["message"], reply
    assert config_dump(node) == before
    assert node.running.pipeline.detector.score_threshold == threshold


def test_config_set_rolls_back_when_it_cannot_be_persisted(operator, node):
    overlay = node.running.state_dir / "config-overlay.toml"
    saved = overlay.read_bytes() if overlay.exists() else None
    overlay.unlink(missing_ok=True)
    overlay.mkdir()  # rename onto a directory fails: the disk refuses the change
    try:
        before = config_dump(node)
        reply = operator.request("config/set", {"values": {"detect.score_threshold": 0.77, "capture.fps": 5}})
        assert reply["status"] == "error" and "rolled back" in reply["message"]
        assert config_dump(node) == before
        assert node.running.pipeline.detector.score_threshold != 0.77
        assert node.running.pipeline.max_fps is None
    finally:
        overlay.rmdir()
        if saved is not None:
            overlay.write_bytes(saved)


def test_zones_and_masks_change_live_through_issue_7_apis(operator, node):
    rules = {
        "zones": [{"name": "kerb", "polygon": [[0.0, 0.7], [1.0, 0.7], [1.0, 1.0], [0.0, 1.0]]}],
        "rules": [{"name": "into kerb", "type": "zone_enter", "zone": "kerb"}],
    }
    reply = operator.request("config/set", {"values": {"rules": rules, "privacy.masks": [MASK]}}, actor="ops")
    assert reply["status"] == "ok", reply
    assert list(node.stage("rules").engine.status()["rules"]) == ["into kerb"]
    assert node.stage("privacy").redactor.masks.names == ["garden"]
    actions = [e["action"] for e in audit_entries(node)]
    assert "rules.update" in actions and "masks.update" in actions  # audited by issue 7's own APIs


def test_snapshot_is_redacted_sent_as_a_thumbnail_and_audited(operator, node, event_validator):
    assert operator.request("config/set", {"values": {"privacy.masks": [MASK]}})["status"] == "ok"
    reply = operator.request("snapshot", {"reason": "check the view"}, actor="tech")
    assert reply["status"] == "ok", reply
    meta = reply["data"]["thumb"]
    assert "masks" in meta["redaction"]
    assert operator.sub.wait_for(
        lambda ms: any(
            json.loads(m.payload).get("type") == "snapshot" for m in ms if m.topic.endswith("/events")
        ),
        10,
    )
    event = next(
        e for e in operator.events() if e["type"] == "snapshot" and e["thumb"]["sha256"] == meta["sha256"]
    )
    event_validator.validate(event)
    assert event["snapshot"]["request"] == reply["id"] and event["thumb"]["redaction"] == meta["redaction"]
    assert operator.sub.wait_for(lambda ms: any(m.topic.endswith(f"/thumbs/{event['id']}") for m in ms), 10)
    jpeg = next(m.payload for m in operator.messages(f"thumbs/{event['id']}"))
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    inside = image[int(0.02 * h) : int(0.38 * h), int(0.02 * w) : int(0.28 * w)]
    assert inside.max() <= 16  # black, up to JPEG ringing
    assert image[int(0.6 * h) :, int(0.5 * w) :].mean() > 30  # the rest of the view is there
    actions = [(e["action"], e["actor"]) for e in audit_entries(node)]
    assert any(a == "snapshot.request" and "tech" in who for a, who in actions)
    assert any(a == "snapshot.sent" and "tech" in who for a, who in actions)


def test_a_snapshot_the_privacy_fallback_refuses_is_not_sent(tmp_path):
    """No face model and `drop_person_thumbnails`: a frame with a person in it never leaves."""
    config = {
        "privacy": {"faces": {"model": str(tmp_path / "absent.onnx"), "fallback": "drop_person_thumbnails"}}
    }
    with AgentHarness(tmp_path / "state", config=config) as node:
        assert node.wait_records(lambda _rs: node.stage("health").tap.latest() is not None, 10)
        frame = node.stage("health").tap.latest().frame
        snapshots = node.stage("control").snapshots
        with pytest.raises(CommandError, match="refused"):
            snapshots.take(
                actor="tech", reason="look", frame=frame, objects=[("person", (0.1, 0.2, 0.2, 0.6))]
            )
        assert snapshots.take(
            actor="tech", reason="look", frame=frame, objects=[("car", (0.1, 0.2, 0.4, 0.4))]
        )
        actions = [e["action"] for e in audit_entries(node)]
    assert actions.count("snapshot.refused") == 1 and actions.count("snapshot.sent") == 1
    assert [r["type"] for r in node.records if r.get("type") == "snapshot"] == ["snapshot"]


def test_modem_reset_without_a_modem_is_a_clear_error(operator):
    reply = operator.request("modem/reset")
    assert reply["status"] == "error" and "no modem" in reply["message"]


# -- bad requests -------------------------------------------------------------------------------------
BAD = [
    ("ping", b"{not json", None, "not valid JSON"),
    ("ping", b"\xff\xfe", None, "UTF-8"),
    ("ping", b"[1, 2]", None, "JSON object"),
    ("ping", b'{"args": {}}', None, "id"),
    ("ping", b'{"id": 42}', None, "id"),
    ("ping", b'{"id": "has space"}', None, "id"),
    ("ping", b'{"id": "x1", "sudo": true}', "x1", "unknown field"),
    ("ping", b'{"id": "x2", "args": []}', "x2", "args"),
    ("ping", b'{"id": "x3", "args": {"loud": true}}', "x3", "args.loud"),
    ("snapshot", b'{"id": "x4", "args": {"reason": 7}}', "x4", "args.reason"),
    ("config/set", b'{"id": "x5", "args": {"values": "all"}}', "x5", "args.values"),
    ("model/update", b'{"id": "x6", "args": {"url": "http://h/m.onnx", "sha256": "abc"}}', "x6", "sha256"),
    (
        "model/update",
        b'{"id": "x7", "args": {"url": "file:///etc/passwd", "sha256": "' + b"a" * 64 + b'"}}',
        "x7",
        "http",
    ),
    ("self-destruct", b'{"id": "x8"}', "x8", "unknown command"),
    ("ping", b'{"id": "x9", "ts": "yesterday"}', "x9", "RFC 3339"),
    ("status", b'{"id": "x10", "args": {"verbose": true}}', "x10", "args.verbose"),
    ("restart", b'{"id": "x11", "args": {"reason": 5}}', "x11", "args.reason"),
    ("config/get", b'{"id": "x12", "args": {"keys": "detect"}}', "x12", "args.keys"),
    ("modem/reset", b'{"id": "x13", "args": {"hard": true}}', "x13", "args.hard"),
]


@pytest.mark.parametrize(("command", "payload", "reply_id", "reason"), BAD)
def test_bad_requests_get_an_error_reply_and_change_nothing(
    operator, node, command, payload, reply_id, reason
):
    before = config_dump(node)
    reply = operator.raw(command, payload)
    assert reply["status"] == "error" and reply["id"] == reply_id
    assert reason in reply["message"], reply["message"]
    assert config_dump(node) == before


def test_oversized_payload_is_refused_unread(operator, node):
    limit = node.agent.config.control.max_payload_bytes
    payload = json.dumps({"id": "big", "args": {"reason": "x" * limit}}).encode()
    reply = operator.raw("snapshot", payload)
    assert reply["status"] == "error" and "refused" in reply["message"] and reply["id"] is None
    assert node.stage("control").counts["oversized"] >= 1


def test_duplicate_request_id_is_refused(operator):
    assert operator.request("ping", id="once-only")["status"] == "ok"
    again = operator.request("ping", id="once-only")
    assert again["status"] == "error" and "duplicate" in again["message"]


def test_stale_and_future_requests_are_refused_on_a_trusted_clock(operator):
    stale = operator.request("ping", ts=rfc3339(time.time() - 3600))
    assert stale["status"] == "error" and "stale" in stale["message"]
    future = operator.request("ping", ts=time.time() + 3600)
    assert future["status"] == "error" and "future" in future["message"]
    fresh = operator.request("ping", ts=rfc3339(time.time() - 5))
    assert fresh["status"] == "ok"


def test_a_boolean_ts_is_a_bad_request():
    with pytest.raises(CommandError, match="bad request"):
        parse_request(b'{"id": "a", "ts": true}')


def test_a_full_queue_answers_busy_at_once(tmp_path):
    """The uplink thread never waits: with the control thread not running, the queue fills up."""
    from agent.control.stage import ControlStage

    with AgentHarness(tmp_path / "state", config={"control": {"queue": 1}}) as harness:
        stage = ControlStage(harness.agent, harness.running, harness.stage("health"), None)
        stage.on_message("cmd/ping", b'{"id": "first"}')
        stage.on_message("cmd/ping", b'{"id": "second"}')
        assert harness.wait_records(lambda rs: any(r["stream"] == "cmd_result" for r in rs), 10)
    replies = [r for r in harness.records if r["stream"] == "cmd_result"]
    assert [(r["id"], r["status"]) for r in replies] == [("second", "error")]
    assert "busy" in replies[0]["message"] and stage.counts["busy"] == 1


# -- fuzzing ------------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(alphabet="abcXYZ019._:- ", max_size=70) | JSON,
        "args": st.dictionaries(
            st.sampled_from(["values", "keys", "reason", "url", "sha256", "x"]), JSON, max_size=3
        )
        | JSON,
        "ts": JSON,
        "actor": JSON,
        "extra": JSON,
    },
)
PAYLOADS = st.one_of(
    st.binary(max_size=200),
    ENVELOPES.map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
)
COMMANDS = st.sampled_from(
    [
        "ping",
        "status",
        "snapshot",
        "config/get",
        "config/set",
        "modem/reset",
        "model/update",
        "nope",
        "config",
        "cmd/ping",
        "",
    ]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(command=COMMANDS, payload=PAYLOADS)
def test_fuzzed_commands_never_crash_the_agent(operator, node, command, payload):
    """Every payload gets exactly one reply; the agent keeps analysing. (`restart` is left out: it is
    a legitimate way to end the process.)"""
    reply = operator.raw(command, payload, timeout=20)
    assert reply["status"] in ("ok", "error")
    assert node.thread is not None and node.thread.is_alive() and node.error is None


def test_the_agent_still_works_after_the_fuzzing(operator, node):
    frames = node.running.pipeline.stats.frames
    assert operator.request("ping")["status"] == "ok"
    assert node.wait_records(lambda _rs: node.running.pipeline.stats.frames > frames + 5, 10)
