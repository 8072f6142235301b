"""What the back office accepts from the wire and what it refuses (with which reason), against the
real event schema (schema/event-v1.json) and events produced by the real agent."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

from fleet import wire
from fleet.eventschema import EventValidator
from fleet.wire import Event, Incoming, Rejected, Reply, Status, Telemetry, Thumb, WireParser
from tests.conftest import read_events, run_agent
from tests.fleet_support import dumps, event, jpeg


@pytest.fixture(scope="module")
def parser() -> WireParser:
    known = {"pole-1", "pole-2", "sim-node"}
    return WireParser(
        "vigil", EventValidator(), lambda n: None if n in known else f"{n} is not in the inventory"
    )


def parse(parser: WireParser, topic: str, payload: bytes, **kw) -> object:
    return parser.parse(Incoming(topic, payload, 0.0, **kw))


def test_events_from_the_real_agent_are_accepted(parser: WireParser, tmp_path):
    res = run_agent(
        "--simulate",
        "--source",
        "synthetic:3",
        "--max-frames",
        "120",
        "--no-realtime",
        "--state-dir",
        str(tmp_path / "state"),
        "--http",
        "off",
    )
    assert res.returncode == 0, res.stderr
    events = read_events(res.stdout)
    assert events
    for body in events:
        parsed = parse(parser, "vigil/sim-node/events", json.dumps(body).encode())
        assert isinstance(parsed, Event), parsed
        assert (parsed.id, parsed.seq, parsed.node) == (body["id"], body["seq"], "sim-node")
        assert parsed.text == json.dumps(body)  # stored exactly as sent


def test_compact_events_without_optional_fields_and_new_types_are_accepted(parser: WireParser):
    body = event(
        "pole-1", 7, compact=True, type="bicycle_counted"
    )  # no priority, thumb, location, clock, model
    parsed = parse(parser, "vigil/pole-1/events", dumps(body))
    assert isinstance(parsed, Event), parsed
    assert parsed.priority == "normal" and parsed.thumb_sha256 is None and parsed.location is None
    assert parsed.type == "bicycle_counted"


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        ("vigil/pole-1/events", b"\xff\xfe not json", wire.NOT_JSON, "not UTF-8"),
        ("vigil/pole-1/events", b"{truncated", wire.NOT_JSON, ""),
        ("vigil/pole-1/events", b"[1, 2]", wire.NOT_JSON, "a JSON list"),
        ("vigil/pole-1/events", dumps(event("pole-1", 0, track=1)), wire.SCHEMA, "seq"),
        ("vigil/pole-1/events", dumps(event("pole-1", 1, ts=None)), wire.SCHEMA, "ts"),
        (
            "vigil/pole-1/events",
            dumps({k: v for k, v in event("pole-1", 1).items() if k != "id"}),
            wire.SCHEMA,
            "id",
        ),
        ("vigil/pole-1/events", dumps(event("pole-1", 1, event_id="not-a-uuid")), wire.SCHEMA, "id"),
        ("vigil/pole-1/events", dumps(event("pole-1", 1, priority="urgent")), wire.SCHEMA, "priority"),
        ("vigil/pole-1/events", dumps(event("pole-1", 2**60, track=1)), wire.SCHEMA, "seq"),
        (
            "vigil/pole-1/events",
            dumps(event("pole-1", 1, schema="vigil.event/2")),
            wire.UNSUPPORTED_SCHEMA,
            "event/2",
        ),
        ("vigil/pole-1/events", dumps(event("pole-2", 1)), wire.NODE_MISMATCH, "pole-2"),
        ("vigil/pole-1/events", b"{" + b" " * 70000 + b"}", wire.OVERSIZED, "70002 bytes"),
        ("vigil/stranger/events", dumps(event("stranger", 1)), wire.UNKNOWN_NODE, "inventory"),
        ("vigil/pole-1/other", b"{}", wire.BAD_TOPIC, "other"),
        ("vigil/pole-1/events/extra", b"{}", wire.BAD_TOPIC, ""),
        ("city/pole-1/events", b"{}", wire.BAD_TOPIC, "not under vigil/"),
        ("vigil/-bad/events", b"{}", wire.BAD_TOPIC, "not a node id"),
        ("vigil/pole-1/thumbs/not-an-id", jpeg(), wire.BAD_TOPIC, "not an event id"),
        ("vigil/pole-1/thumbs/0190d1f2-7a1b-7c3d-8e4f-0123456789ab", b"GIF89a....", wire.NOT_JPEG, ""),
        ("vigil/pole-1/status", b'{"state": "sleeping"}', wire.SCHEMA, "state"),
        ("vigil/pole-1/telemetry", dumps({"node": "pole-2"}), wire.NODE_MISMATCH, ""),
    ],
)
def test_bad_input_is_refused_with_a_reason(parser: WireParser, topic, payload, reason, detail):
    parsed = parse(parser, topic, payload)
    assert isinstance(parsed, Rejected), parsed
    assert parsed.reason == reason
    assert detail in parsed.detail


def test_thumbnails_status_telemetry_and_replies(parser: WireParser):
    image = jpeg(3)
    body = event("pole-1", 1, thumb=image)
    thumb = parse(parser, f"vigil/pole-1/thumbs/{body['id']}", image, degraded=True)
    assert isinstance(thumb, Thumb) and thumb.sha256 == body["thumb"]["sha256"] and thumb.degraded
    status = parse(parser, "vigil/pole-1/status", b'{"state":"offline","node":"pole-1"}', retain=True)
    assert isinstance(status, Status) and status.state == "offline" and status.retained
    telemetry = parse(parser, "vigil/pole-1/telemetry", b'{"schema":"vigil.telemetry/1","node":"pole-1"}')
    assert isinstance(telemetry, Telemetry) and len(telemetry.digest) == 64
    reply = parse(parser, "vigil/pole-1/cmd_result", b'{"id":"op-1","command":"ping","status":"ok"}')
    assert isinstance(reply, Reply) and (reply.request_id, reply.command, reply.status) == (
        "op-1",
        "ping",
        "ok",
    )


def test_a_topic_prefix_with_several_levels(parser: WireParser):
    deep = WireParser("city/north/vigil", EventValidator())
    assert deep.filters()[0] == "city/north/vigil/+/events"
    parsed = deep.parse(Incoming("city/north/vigil/pole-1/events", dumps(event("pole-1", 3)), 0.0))
    assert isinstance(parsed, Event) and parsed.seq == 3
