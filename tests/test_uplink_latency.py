"""docs/uplink.md's brownout figure, as a promise: behind a 2 kB/s link that is still draining an outage's
backlog, live event metadata reaches the broker within LATENCY_P50_S (median) and LATENCY_P95_S (95th
percentile) of being accepted. The real agent (every stage, in-process), a real Mosquitto behind the
real throttling proxy; the bounds are about twice the documented figures (p50 ≈ 1.4 s, p95 ≈ 2.7 s) and
what this machine measures, so a busy two-core CI runner passes while a publisher that lets metadata
queue behind thumbnails or the backlog does not. The measured figures go to
test-artifacts/agent-2kBps-metadata-latency.json.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import UplinkConfig
from agent.uplink.link import LinkProxy, LinkState
from agent.uplink.mqtt import MqttPublisher
from agent.uplink.spool import Outgoing, Priority, Record, Spool, SpoolLimits
from tests.agent_harness import NODE, AgentHarness
from tests.brokers import Collector, Mosquitto

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LINK_BPS = 2000
LATENCY_P50_S = 3.0  # documented in docs/uplink.md ("Brownouts and budgets")
LATENCY_P95_S = 5.0
SETTLE_S = 10.0  # what the publisher may take after the link comes back to measure it
BACKLOG_EVENTS = 30
LIVE_EVENTS = 30  # after SETTLE_S


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Brownout:
    """Live events (committed after the link came back): seconds after the link came back they were
    committed, and how long they took to reach the broker."""

    live: list[tuple[float, float]]
    backlog: int
    backlog_bytes: int  # payload bytes spooled when the link came back
    backlog_drained_s: float  # when the last of that backlog arrived, seconds after the link came back
    thumbnails_waiting: int

    def latencies(self, after_s: float = 0.0) -> list[float]:
        return [latency for at, latency in self.live if at >= after_s]


@pytest.fixture(scope="module")
def brownout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brownout]:
    """One run: a 30-event outage backlog with thumbnails, then 2 kB/s while the synthetic street goes on."""
    tmp = tmp_path_factory.mktemp("brownout")
    broker = Mosquitto(tmp / "broker").start()
    link = LinkProxy(("127.0.0.1", broker.port)).start()
    link.set_state(LinkState("down"))
    collector = Collector(broker.url, [f"vigil/{NODE}/#"])
    committed_at: dict[str, float] = {}  # event id -> when the spool committed it (accepted)
    lock = threading.Lock()

    def stamp(records: list[Record]) -> None:
        now = time.monotonic()
        with lock:
            committed_at.update((r.id, now) for r in records if r.stream == "events")

    config: dict[str, Any] = {
        "spool": {"commit_interval_ms": 200},  # the default group commit, part of what is promised
        "capture": {"source": "synthetic:5", "fps": 20.0, "realtime": True},  # a live camera's pace
    }
    harness = AgentHarness(tmp / "state", broker="mqtt://{}:{}".format(*link.address), config=config)
    harness.agent.on_started(lambda running: running.spool.add_listener(stamp))

    def live_settled(messages: list) -> bool:
        arrived = {json.loads(m.payload)["id"] for m in messages if m.topic == f"vigil/{NODE}/events"}
        with lock:
            return (
                sum(1 for i in arrived - backlog if committed_at.get(i, 0) >= link_up + SETTLE_S)
                >= LIVE_EVENTS
            )

    try:
        harness.start()
        # the outage: a backlog of events with thumbnails builds up in the spool
        assert harness.wait_records(
            lambda rs: sum(r["stream"] == "events" for r in rs) >= BACKLOG_EVENTS, 120
        )
        with lock:
            backlog = set(committed_at)
        with harness._records_cond:
            backlog_bytes = sum(len(r.payload) for r in harness.raw if r.stream in ("events", "thumbs"))
        link.set_state(LinkState("up", rate_bps=LINK_BPS))
        link_up = time.monotonic()
        assert collector.wait_for(live_settled, 240), "live events did not arrive"
        stats = harness.running.spool.stats()
    finally:
        harness.stop()
        collector.close()
        link.stop()
        broker.stop()
    first_arrival: dict[str, float] = {}
    backlog_arrivals = [link_up]
    for m in collector.snapshot():
        if m.topic == f"vigil/{NODE}/events":
            event_id = json.loads(m.payload)["id"]
            first_arrival.setdefault(event_id, m.at)
        else:
            event_id = m.topic.rsplit("/", 1)[-1]  # thumbs/{event id}
        if event_id in backlog:
            backlog_arrivals.append(m.at)
    live = sorted(
        (committed_at[i] - link_up, first_arrival[i] - committed_at[i])
        for i in first_arrival
        if i not in backlog and i in committed_at
    )
    drained = max(backlog_arrivals) - link_up
    result = Brownout(live, len(backlog), backlog_bytes, drained, stats["classes"]["thumb"]["depth"])
    settled, everything = result.latencies(SETTLE_S), result.latencies()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "agent-2kBps-metadata-latency.json").write_text(
        json.dumps(
            {
                "what": "live event metadata, spool commit -> broker delivery, real agent behind a 2 kB/s link "
                "draining an outage backlog",
                "link_bytes_per_s": LINK_BPS,
                "backlog_events": result.backlog,
                "backlog_payload_bytes": result.backlog_bytes,
                "backlog_delivered_after_s": round(result.backlog_drained_s, 1),
                "thumbnails_still_waiting": result.thumbnails_waiting,
                f"from_{SETTLE_S:g}s_after_the_link_came_back": summary(settled),
                "from_the_moment_the_link_came_back": summary(everything),
                "bound_s": {"p50": LATENCY_P50_S, "p95": LATENCY_P95_S},
                "timeline": [[round(at, 1), round(latency, 2)] for at, latency in live],
            },
            indent=2,
        )
        + "\n"
    )
    yield result


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "events": len(latencies),
        "p50_s": round(percentile(latencies, 50), 2),
        "p95_s": round(percentile(latencies, 95), 2),
        "max_s": round(max(latencies), 2),
    }


def test_live_metadata_latency_under_a_2kBps_link_with_a_backlog(brownout):
    latencies = brownout.latencies(SETTLE_S)
    assert len(latencies) >= LIVE_EVENTS
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    print(
        f"live metadata latency at 2 kB/s with a backlog: p50 {p50:.2f}s p95 {p95:.2f}s ({len(latencies)} events)"
    )
    assert p50 <= LATENCY_P50_S, f"median {p50:.2f}s over the documented {LATENCY_P50_S}s"
    assert p95 <= LATENCY_P95_S, f"p95 {p95:.2f}s over the documented {LATENCY_P95_S}s"
    # it was a brownout: when the link came back the spool held well over ten seconds of it, and the
    # backlog was still draining for a good part of the measured stretch
    assert brownout.backlog_bytes > 10 * LINK_BPS, brownout.backlog_bytes
    assert brownout.backlog_drained_s > SETTLE_S + 5, brownout.backlog_drained_s


def test_a_live_event_right_after_the_link_comes_back_does_not_wait_behind_the_backlog(tmp_path):
    """The spool and the publisher (the agent's own) with a backlog of 40 one-kilobyte events; the link
    comes back at 2 kB/s and a live event is committed at once. It should go within about two seconds
    of link (the allowance) plus its own time on the wire (bound: twice that), not after the whole
    first window."""
    broker = Mosquitto(tmp_path / "broker").start()
    link = LinkProxy(("127.0.0.1", broker.port)).start()
    link.set_state(LinkState("down"))
    collector = Collector(broker.url, [f"vigil/{NODE}/events"])
    # the outage is told to the spool's clock (its monotonic clock is injected): the backlog waited
    # longer than the 10 s that make a record historical, without the test sleeping through it
    outage = [0.0]
    spool = Spool(
        tmp_path / "spool",
        limits=SpoolLimits(commit_interval_s=0.05),
        monotonic=lambda: time.monotonic() + outage[0],
    ).start()
    config = UplinkConfig(
        broker="mqtt://{}:{}".format(*link.address), reconnect_min_s=0.1, reconnect_max_s=0.2
    )
    publisher = MqttPublisher.from_config(spool, config, NODE).start()
    try:
        for n in range(40):
            spool.accept(
                [
                    Outgoing(
                        "events",
                        Priority.EVENT,
                        "events",
                        {"type": "object_appeared", "pad": "x" * 900, "n": n},
                    )
                ]
            )
        assert spool.flush()
        outage[0] = 30.0  # thirty seconds pass with the link down
        link.set_state(LinkState("up", rate_bps=LINK_BPS))
        # the backlog has started to flow (the first record is on the wire, its PUBACK not back yet):
        # whatever the publisher has handed over by now is ahead of the live event
        assert link.wait_for(lambda proxy: proxy.bytes_up > 1500, 30), "the publisher did not reconnect"
        spool.accept(
            [Outgoing("events", Priority.EVENT, "events", {"type": "object_appeared", "live": True})]
        )
        assert spool.flush()
        accepted = time.monotonic()

        def live(ms: list) -> list:
            return [m for m in ms if json.loads(m.payload).get("live")]

        assert collector.wait_for(lambda ms: bool(live(ms)), 60)
        latency = live(collector.snapshot())[0].at - accepted
    finally:
        publisher.stop()
        spool.stop()
        collector.close()
        link.stop()
        broker.stop()
    assert latency <= 2 * (2.0 + 0.1), f"the live event waited {latency:.1f}s behind the backlog"
