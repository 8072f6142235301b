"""README and docs/uplink.md promises about slow links and refusing brokers, shown on the real agent
(every stage, in-process: tests/agent_harness.py) against a real Mosquitto behind a real throttling proxy.

- under a slow link thumbnails wait and shrink; metadata does not (MQTT 5 `vigil-degraded`, and the
  event's `thumb.sha256` names the original);
- live metadata latency behind a 2 kB/s link with a backlog stays under the documented bound;
- a publish the broker refuses is dropped and counted as `refused_by_broker`; everything else flows.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.uplink.link import LinkProxy, LinkState
from tests.agent_harness import NODE, AgentHarness
from tests.brokers import Collector, Mosquitto, Received
from tests.delivery import events_by_seq, spool_stats, thumbnails

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BIG_THUMBNAILS = {
    "thumb_margin": 1.0,
    "thumb_quality": 95,
    "thumb_max_side": 1024,
}  # 2–12 kB on the synthetic street


@pytest.fixture
def link(broker: Mosquitto) -> Iterator[LinkProxy]:
    proxy = LinkProxy(("127.0.0.1", broker.port)).start()
    yield proxy
    proxy.stop()


def proxied(link: LinkProxy) -> str:
    return "mqtt://{}:{}".format(*link.address)


def finite_harness(
    state: Path, broker_url: str, frames: int, config: dict[str, Any]
) -> tuple[AgentHarness, threading.Event]:
    """An agent that analyses `frames` frames of the synthetic street as fast as it can, then waits (up to
    uplink.drain_at_end_s) until its spool has drained and exits; the event is set after the last frame."""
    harness = AgentHarness(state, broker=broker_url, config=config)
    harness.agent.options.max_frames = frames
    done = threading.Event()
    seen = [0]

    def count(_frame: object, _detections: object, _tracker: object) -> None:
        seen[0] += 1
        if seen[0] >= frames:
            done.set()

    harness.agent.on_started(lambda running: running.pipeline.observers.append(count))
    return harness, done


def committed_events(harness: AgentHarness) -> dict[str, dict[str, Any]]:
    """id -> body of every event the agent has committed so far (as its spool's listeners saw them)."""
    last = harness.running.spool.seq("events")

    def events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["stream"] == "events"]

    assert harness.wait_records(lambda records: len(events(records)) >= last, 10)
    with harness._records_cond:
        return {r["id"]: r for r in events(harness.records)}


def jpeg_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image.shape[1], image.shape[0]


def test_thumbnails_wait_and_shrink_under_a_slow_link_and_name_the_original(tmp_path, broker, link):
    """A backlog of real events with the agent's own JPEG thumbnails meets a 1 kB/s link (MQTT 5): every
    event's metadata arrives before any thumbnail; a thumbnail that would hold the link for more than
    five seconds arrives re-encoded at half size, flagged `vigil-degraded: 1`, while its event's
    `thumb.sha256` names the original (kept on the node); smaller ones arrive untouched."""
    link.set_state(LinkState("down"))
    collector = Collector(broker.url, [f"vigil/{NODE}/#"], protocol="5")
    state = tmp_path / "state"
    config = {
        "uplink": {"protocol": "5", "drain_at_end_s": 180},
        "capture": {"source": "synthetic:3", "realtime": False},
        "events": BIG_THUMBNAILS,
    }
    harness, stream_done = finite_harness(state, proxied(link), 400, config)
    try:
        harness.start()
        assert stream_done.wait(60), "the agent did not analyse its frames"
        assert harness.running.spool.flush()
        backlog = committed_events(harness)
        with_thumbs = {i: e["thumb"] for i, e in backlog.items() if e.get("thumb")}
        assert len(with_thumbs) >= 5 and max(t["bytes"] for t in with_thumbs.values()) > 8000
        assert harness.running.thumbnails is not None
        kept = {i: harness.running.thumbnails.get(i) for i in with_thumbs}  # the node's own copies
        link.set_state(LinkState("up", rate_bps=1000))

        def arrived(ms: list[Received]) -> bool:
            got = thumbnails(ms, NODE)
            return len(events_by_seq(ms, NODE)) >= len(backlog) and set(with_thumbs) <= set(got)

        assert collector.wait_for(arrived, 180), "the backlog did not arrive"
        harness.thread.join(30)  # it drained: the agent exits by itself
        assert not harness.thread.is_alive() and harness.rc == 0
    finally:
        harness.stop()
        collector.close()
    messages = collector.snapshot()
    events = [m for m in messages if m.topic == f"vigil/{NODE}/events"]
    thumbs = [m for m in messages if m.topic.startswith(f"vigil/{NODE}/thumbs/")]
    # wait: every event's metadata went before any thumbnail
    assert max(m.at for m in events) <= min(m.at for m in thumbs), "a thumbnail went before metadata"
    received_meta = {
        str(b["id"]): b["thumb"] for b in map(json.loads, (m.payload for m in events)) if b.get("thumb")
    }
    assert received_meta == with_thumbs  # what a consumer reads is what the node committed
    degraded = 0
    for m in thumbs:
        event_id = m.topic.rsplit("/", 1)[1]
        meta = received_meta[event_id]
        original = kept[event_id]  # what the node kept
        assert original is not None
        assert hashlib.sha256(original).hexdigest() == meta["sha256"]  # the event names the original
        if m.properties.get("vigil-degraded") == "1":
            degraded += 1
            assert len(m.payload) < len(original)
            assert hashlib.sha256(m.payload).hexdigest() != meta["sha256"]
            width, height = jpeg_size(m.payload)
            assert abs(width - meta["size"][0] / 2) <= 1 and abs(height - meta["size"][1] / 2) <= 1
        else:
            assert m.payload == original, "a thumbnail changed without saying so"
        if meta["bytes"] > 10 * 1000:  # ten seconds of this link: it must have shrunk
            assert m.properties.get("vigil-degraded") == "1", f"{meta['bytes']} bytes sent whole at 1 kB/s"
        if meta["bytes"] < 2 * 1000:  # two seconds: no reason to touch it
            assert "vigil-degraded" not in m.properties
    assert degraded >= 1


# -- a broker that refuses ------------------------------------------------------------------------
# The node may publish its events, status, telemetry and replies, but not thumbnails; everyone may read.
ACL_WITHOUT_THUMBNAILS = """topic readwrite vigil/+/events
topic readwrite vigil/+/status
topic readwrite vigil/+/telemetry
topic readwrite vigil/+/cmd_result
topic readwrite vigil/+/cmd/#
topic read vigil/#
"""


def refusing_broker(folder: Path, extra: str) -> Mosquitto:
    return Mosquitto(folder, extra=extra).start()


def run_to_the_end(state: Path, broker_url: str, protocol: str, drain_s: float = 60) -> AgentHarness:
    """A finite run of the agent with thumbnails; returns once it has exited by itself."""
    config = {
        "uplink": {"protocol": protocol, "drain_at_end_s": drain_s},
        "capture": {"source": "synthetic:3", "realtime": False},
        "events": BIG_THUMBNAILS,
    }
    harness, stream_done = finite_harness(state, broker_url, 400, config)
    harness.start()
    assert stream_done.wait(60), "the agent did not analyse its frames"
    harness.thread.join(drain_s + 30)
    assert not harness.thread.is_alive(), "the agent did not exit"
    return harness


def test_a_publish_the_broker_refuses_is_dropped_and_counted_mqtt5(tmp_path):
    """MQTT 5: the broker's ACL denies thumbnails; Mosquitto answers each with PUBACK 0x87 (not
    authorized). The agent drops those records, counts them as refused_by_broker (agent spool stats),
    and every event still arrives; the agent drains its spool and exits."""
    (tmp_path / "acl").write_text(ACL_WITHOUT_THUMBNAILS)
    broker = refusing_broker(tmp_path / "broker", f"acl_file {tmp_path / 'acl'}\n")
    collector = Collector(broker.url, [f"vigil/{NODE}/#"], protocol="5")
    state = tmp_path / "state"
    try:
        harness = run_to_the_end(state, broker.url, "5")
        assert harness.rc == 0, harness.error
        committed = {r["id"]: r for r in harness.records if r["stream"] == "events"}  # it has stopped: all
        refused = [e["thumb"]["bytes"] for e in committed.values() if e.get("thumb")]
        assert len(refused) >= 3
        assert collector.wait_for(lambda ms: len(events_by_seq(ms, NODE)) >= len(committed), 30)
    finally:
        collector.close()
        broker.stop()
    stats = spool_stats(state)
    messages = collector.snapshot()
    assert sorted(events_by_seq(messages, NODE)) == list(range(1, stats["seq"]["events"] + 1))
    assert not thumbnails(messages, NODE)  # the broker kept its word
    assert stats["depth"] == 0, stats
    drops = {"refused_by_broker": {"count": len(refused), "bytes": sum(refused)}}
    assert stats["classes"]["thumb"]["drops"] == drops
    assert not any(cls["drops"] for name, cls in stats["classes"].items() if name != "thumb")


def test_mqtt311_refusals_are_acknowledged_as_success_and_invisible_to_the_node(tmp_path):
    """What MQTT 3.1.1 allows: its PUBACK has no reason code, and Mosquitto 2.0 acknowledges a publish
    its ACL denies exactly like one it delivered (it only logs the denial). The node cannot tell: it
    counts nothing and its spool empties, while nobody ever receives the thumbnails. docs/uplink.md says
    so; use MQTT 5 (uplink.protocol = "5") where ACLs may refuse. If a broker version starts closing the
    connection instead, or the agent starts counting these, this test says so."""
    (tmp_path / "acl").write_text(ACL_WITHOUT_THUMBNAILS)
    broker = refusing_broker(tmp_path / "broker", f"acl_file {tmp_path / 'acl'}\n")
    collector = Collector(broker.url, [f"vigil/{NODE}/#"])
    state = tmp_path / "state"
    try:
        harness = run_to_the_end(state, broker.url, "3.1.1")
        assert harness.rc == 0, harness.error
        committed = {r["id"]: r for r in harness.records if r["stream"] == "events"}
        assert sum(1 for e in committed.values() if e.get("thumb")) >= 3
        assert collector.wait_for(lambda ms: len(events_by_seq(ms, NODE)) >= len(committed), 30)
    finally:
        collector.close()
        broker.stop()
    stats = spool_stats(state)
    assert stats["depth"] == 0 and not any(cls["drops"] for cls in stats["classes"].values())
    assert not thumbnails(collector.snapshot(), NODE)


def test_a_record_over_the_brokers_size_limit_is_dropped_as_refused_mqtt5(tmp_path):
    """MQTT 5, `message_size_limit 3000`: thumbnails above it are refused, counted as refused_by_broker,
    and everything else (every event, the smaller thumbnails) still arrives."""
    broker = refusing_broker(tmp_path / "broker", "message_size_limit 3000\n")
    collector = Collector(broker.url, [f"vigil/{NODE}/#"], protocol="5")
    state = tmp_path / "state"
    try:
        harness = run_to_the_end(state, broker.url, "5", drain_s=10)
        committed = {r["id"]: r for r in harness.records if r["stream"] == "events"}
        sizes = [e["thumb"]["bytes"] for e in committed.values() if e.get("thumb")]
        too_big = [size for size in sizes if size > 3000]
        assert too_big and len(too_big) < len(sizes)
        collector.wait_for(lambda ms: len(events_by_seq(ms, NODE)) >= len(committed), 10)
    finally:
        collector.close()
        broker.stop()
    stats = spool_stats(state)
    messages = collector.snapshot()
    assert sorted(events_by_seq(messages, NODE)) == list(range(1, stats["seq"]["events"] + 1))
    assert len(thumbnails(messages, NODE)) == len(sizes) - len(too_big)
    assert stats["depth"] == 0, stats
    assert stats["classes"]["thumb"]["drops"] == {
        "refused_by_broker": {"count": len(too_big), "bytes": sum(too_big)}
    }
