"""The MQTT publisher against a real Mosquitto: delivery, status, outages, restarts, brownouts, TLS."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from agent.config.schema import UplinkConfig
from agent.uplink.link import LinkProxy, LinkState
from agent.uplink.mqtt import BrokerUrl, MqttPublisher
from agent.uplink.spool import Outgoing, Priority, Spool, SpoolLimits
from tests.brokers import Collector, Mosquitto, make_tls

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool", limits=SpoolLimits(commit_interval_s=0.05)).start()
    yield s
    s.stop()


def offer_event(spool: Spool, n: int, *, thumb_bytes: int = 0, priority: Priority = Priority.EVENT) -> None:
    group = [
        Outgoing("events", priority, "events", {"type": "object_appeared", "n": n, "t": time.monotonic()})
    ]
    if thumb_bytes:
        group.append(
            Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", os.urandom(thumb_bytes), sequenced=False)
        )
    assert spool.accept(group)


def events_of(messages, node="node-1"):
    return [json.loads(m.payload) for m in messages if m.topic == f"vigil/{node}/events"]


def seqs_of(messages, node="node-1"):
    return sorted({e["seq"] for e in events_of(messages, node)})


def publisher(spool: Spool, url: str, **cfg) -> MqttPublisher:
    config = UplinkConfig(broker=url, reconnect_min_s=0.2, reconnect_max_s=1.0, keepalive_s=5, **cfg)
    return MqttPublisher.from_config(spool, config, "node-1", broker=BrokerUrl.parse(url))


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_events_thumbs_and_status_are_delivered(broker, spool, protocol):
    sub = Collector(broker.url, ["vigil/#"], protocol=protocol)
    pub = publisher(spool, broker.url, protocol=protocol).start()
    try:
        assert sub.wait_for(lambda ms: any(m.topic == "vigil/node-1/status" for m in ms), 10)
        for n in range(10):
            offer_event(spool, n, thumb_bytes=3000)
        assert sub.wait_for(
            lambda ms: (
                len(seqs_of(ms)) == 10 and sum(m.topic.startswith("vigil/node-1/thumbs/") for m in ms) == 10
            ),
            20,
        )
        assert spool.wait_drained(10)  # every record leaves only after its PUBACK
    finally:
        pub.stop()

    def said_offline(ms):
        states = [json.loads(m.payload)["state"] for m in ms if m.topic == "vigil/node-1/status"]
        return states[-1:] == ["offline"]

    assert sub.wait_for(said_offline, 10)
    msgs = sub.snapshot()
    events = events_of(msgs)
    assert seqs_of(msgs) == list(range(1, 11))
    thumbs = {m.topic.rsplit("/", 1)[1]: m.payload for m in msgs if "/thumbs/" in m.topic}
    assert set(thumbs) == {e["id"] for e in events}
    statuses = [json.loads(m.payload)["state"] for m in msgs if m.topic == "vigil/node-1/status"]
    assert statuses[0] == "online" and statuses[-1] == "offline"
    late = Collector(broker.url, ["vigil/node-1/status"], client_id="late")
    try:
        assert late.wait_for(
            lambda ms: ms and ms[-1].retain and json.loads(ms[-1].payload)["state"] == "offline", 5
        )
    finally:
        late.close()
        sub.close()


def test_last_will_says_offline_when_the_node_vanishes(broker, spool):
    proxy = LinkProxy(("127.0.0.1", broker.port)).start()
    sub = Collector(broker.url, ["vigil/node-1/status"])
    pub = publisher(spool, f"mqtt://127.0.0.1:{proxy.address[1]}").start()
    try:
        assert sub.wait_for(lambda ms: any(json.loads(m.payload)["state"] == "online" for m in ms), 10)
        proxy.set_state(LinkState("blackhole"))  # the node loses power: no DISCONNECT reaches the broker
        assert sub.wait_for(lambda ms: json.loads(ms[-1].payload)["state"] == "offline", 20)
    finally:
        pub.stop()
        proxy.stop()
        sub.close()


def gated_publisher(spool: Spool, broker: Mosquitto, **cfg) -> tuple[MqttPublisher, LinkProxy]:
    """A publisher behind a proxy: after a broker restart the test holds the gate shut until its own
    subscriber is back, so nothing the node publishes goes to a broker nobody listens to."""
    gate = LinkProxy(("127.0.0.1", broker.port)).start()
    return publisher(spool, f"mqtt://127.0.0.1:{gate.address[1]}", **cfg).start(), gate


def test_sixty_second_broker_outage_loses_nothing(broker, spool):
    """Events keep coming while the broker is gone for 60 s; afterwards every seq arrives."""
    pub, gate = gated_publisher(spool, broker)
    sub = Collector(broker.url, ["vigil/node-1/events"])
    stop = threading.Event()
    produced = [0]

    def produce():
        while not stop.is_set():
            offer_event(spool, produced[0])
            produced[0] += 1
            stop.wait(0.25)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert sub.wait_for(lambda ms: len(ms) >= 5, 20)
        gate.set_state(LinkState("down"))
        broker.kill()
        outage_started = produced[0]
        seen_before = seqs_of(sub.snapshot())
        sub.close()
        stop.wait(60)
        during = produced[0] - outage_started
        broker.start()
        sub = Collector(broker.url, ["vigil/node-1/events"], client_id="after")
        gate.set_state(LinkState("up"))
        stop.set()
        producer.join()
        spool.flush()
        total = spool.seq("events")

        def complete(ms):
            got = seqs_of(ms)
            return bool(got) and got[0] <= seen_before[-1] + 1 and got == list(range(got[0], total + 1))

        assert sub.wait_for(complete, 60)
        first_after = min(e["seq"] for e in events_of(sub.snapshot()))
    finally:
        stop.set()
        pub.stop()
        gate.stop()
        sub.close()
    assert during >= 200
    assert total == produced[0]
    # after the outage the backlog arrives (flagged historical), then the live tail, with no gap
    after = events_of(sub.snapshot())
    assert first_after <= seen_before[-1] + 1  # nothing between the two subscribers is missing
    assert seqs_of(sub.snapshot()) == list(range(first_after, total + 1))
    assert sum(1 for e in after if e.get("historical")) >= during * 0.8
    assert pub.connects >= 2


def test_broker_restart_mid_stream(broker, spool):
    pub, gate = gated_publisher(spool, broker)
    sub = Collector(broker.url, ["vigil/node-1/events"], client_id="c1")
    try:
        for n in range(50):
            offer_event(spool, n)
        # the broker only promises what it acknowledged; let the first subscriber see all of it
        assert sub.wait_for(lambda ms: len(seqs_of(ms)) == 50, 20)
        gate.set_state(LinkState("down"))
        broker.kill()
        for n in range(50, 100):
            offer_event(spool, n)
        broker.start()
        sub2 = Collector(broker.url, ["vigil/node-1/events"], client_id="c2")
        gate.set_state(LinkState("up"))
        # 51..100 arrive; a few of 1..50 may come again (their PUBACK was lost with the link): at-least-once
        assert sub2.wait_for(lambda ms: set(range(51, 101)) <= set(seqs_of(ms)), 60)
        sub2.close()
    finally:
        pub.stop()
        gate.stop()
        sub.close()


def test_throttled_link_sends_all_metadata_before_the_thumbnail_backlog(broker, spool):
    """2 kB/s: a backlog of events with thumbnails plus live events; metadata first, p95 latency reported."""
    proxy = LinkProxy(("127.0.0.1", broker.port)).start()
    proxy.set_state(LinkState("down"))
    pub = publisher(spool, f"mqtt://127.0.0.1:{proxy.address[1]}").start()
    sub = Collector(broker.url, ["vigil/#"])
    accepted_at: dict[int, float] = {}
    try:
        for n in range(30):  # the outage backlog: events with 6 kB thumbnails
            offer_event(spool, n, thumb_bytes=6000)
        spool.flush()
        proxy.set_state(LinkState("up", rate_bps=2000))
        for n in range(30, 45):  # live events while the backlog drains
            offer_event(spool, n, thumb_bytes=6000)
            spool.flush()
            accepted_at[n + 1] = time.monotonic()  # seq = n + 1
            time.sleep(0.5)  # a live event every half second (the scenario, not synchronisation)
        assert sub.wait_for(lambda ms: len(seqs_of(ms)) == 45, 90)
        # then the thumbnail backlog drains too
        assert sub.wait_for(lambda ms: sum("/thumbs/" in m.topic for m in ms) >= 5, 90)
    finally:
        pub.stop()
        proxy.stop()
        sub.close()
    msgs = sub.snapshot()
    # the first arrival of each backlog event (seq 1..30, accepted during the outage)
    backlog_times = {}
    for m in msgs:
        if m.topic == "vigil/node-1/events" and (seq := json.loads(m.payload)["seq"]) <= 30:
            backlog_times.setdefault(seq, m.at)
    thumb_times = [m.at for m in msgs if "/thumbs/" in m.topic]
    assert sorted(backlog_times) == list(range(1, 31))
    backlog_meta_done = max(backlog_times.values())
    assert len(thumb_times) >= 5 and min(thumb_times) >= backlog_meta_done
    latencies = sorted(
        m.at - accepted_at[json.loads(m.payload)["seq"]]
        for m in msgs
        if m.topic == "vigil/node-1/events" and json.loads(m.payload)["seq"] in accepted_at
    )
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "throttled-2kBps-metadata-latency.json").write_text(
        json.dumps(
            {
                "link_bytes_per_s": 2000,
                "live_events": len(latencies),
                "metadata_latency_s": {
                    "p50": latencies[len(latencies) // 2],
                    "p95": p95,
                    "max": latencies[-1],
                },
                "thumbnails_degraded": pub.degraded,
            },
            indent=2,
        )
    )
    print(f"metadata latency under 2 kB/s: p50 {latencies[len(latencies) // 2]:.2f}s p95 {p95:.2f}s")


def test_tls_with_client_certificate(tmp_path, spool):
    tls = make_tls(tmp_path / "pki", client_cn="node-1")
    b = Mosquitto(tmp_path / "tls-broker", tls=tls).start()
    try:
        sub = Collector(b.url.replace("mqtts://", "mqtts://"), ["vigil/#"], tls=tls, client_id="operator")
        pub = MqttPublisher.from_config(
            spool,
            UplinkConfig(
                broker=f"mqtts://localhost:{b.port}",
                tls={"ca_file": tls.ca, "cert_file": tls.client_cert, "key_file": tls.client_key},
                reconnect_min_s=0.2,
                reconnect_max_s=1.0,
            ),
            "node-1",
        ).start()
        offer_event(spool, 1, thumb_bytes=1000)
        assert sub.wait_for(lambda ms: seqs_of(ms) == [1], 20)
        pub.stop()
        sub.close()
        # without a client certificate the broker refuses, and the publisher says why
        no_cert = MqttPublisher.from_config(
            spool, UplinkConfig(broker=f"mqtts://localhost:{b.port}", tls={"ca_file": tls.ca}), "node-2"
        ).start()
        deadline = time.monotonic() + 10
        while no_cert.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a status field written by another thread
        no_cert.stop()
        assert not no_cert.connected and no_cert.connect_failures >= 1
        # the reason a technician can act on (the TLS alert), not a timeout that names nothing
        assert "closed the connection before accepting it" in str(no_cert.last_error), no_cert.last_error
        assert "certificate required" in str(no_cert.last_error), no_cert.last_error
    finally:
        b.stop()


def test_thumbnail_matches_its_event(broker, spool):
    sub = Collector(broker.url, ["vigil/#"])
    pub = publisher(spool, broker.url).start()
    try:
        import cv2
        import numpy as np

        _ok, jpeg = cv2.imencode(".jpg", np.full((64, 48, 3), 120, np.uint8))
        body = {"type": "object_appeared", "thumb": {"sha256": hashlib.sha256(jpeg.tobytes()).hexdigest()}}
        spool.accept(
            [
                Outgoing("events", Priority.EVENT, "events", body),
                Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", jpeg.tobytes(), sequenced=False),
            ]
        )
        assert sub.wait_for(lambda ms: any("/thumbs/" in m.topic for m in ms) and events_of(ms), 20)
    finally:
        pub.stop()
        sub.close()
    msgs = sub.snapshot()
    (event,) = events_of(msgs)
    (thumb,) = [m for m in msgs if "/thumbs/" in m.topic]
    assert thumb.topic == f"vigil/node-1/thumbs/{event['id']}"
    assert hashlib.sha256(thumb.payload).hexdigest() == event["thumb"]["sha256"]


def test_a_refused_command_subscription_is_reported_not_claimed(spool, caplog):
    """Brokers that refuse a subscription say so in the SUBACK (RabbitMQ, EMQX; Mosquitto 2.0 grants it
    and then delivers nothing); the node must not keep telling operators it takes commands."""
    from agent.uplink.mqtt.session import SessionEvents

    class FakeSession:  # the SUBACKs a session's callbacks collected
        def __init__(self, subacks):
            self.events = SessionEvents(subacks=subacks)

        def take_events(self):
            events, self.events = self.events, SessionEvents()
            return events

    pub = publisher(spool, "mqtt://127.0.0.1:1")  # never started: the SUBACKs are handed in directly
    pub._listening = ["cfg/#", "cmd/#"]
    pending = {7: "cmd/#", 8: "cfg/#"}
    pub._handle(FakeSession([(8, False, "Granted QoS 1")]), None, pending)
    assert pub._listening == ["cfg/#", "cmd/#"] and not pub._status_dirty.is_set()
    with caplog.at_level("WARNING", logger="agent.uplink.mqtt"):
        pub._handle(FakeSession([(7, True, "Not authorized")]), None, pending)
    assert pub._listening == ["cfg/#"] and pub._status_dirty.is_set()
    assert "refused the subscription to vigil/node-1/cmd/#" in caplog.text
    assert json.loads(pub.status_payload("online"))["listening"] == ["cfg/#"]
