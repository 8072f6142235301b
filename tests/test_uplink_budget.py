"""The uplink byte budgets (docs/uplink.md "Brownouts and budgets") on the real agent and a real broker:

- `uplink.max_bytes_per_s` caps what leaves the node over every stretch of time;
- `uplink.max_bytes_per_day`: past half of it thumbnails are degraded, past 90 % only metadata and
  critical records go, at 100 % only critical ones; what was spent survives a restart.

The oracle is the subscriber: one publishing connection, QoS 1, delivered in order, so the payload bytes
received before a message are what the node had spent when it sent it (the budget counts payload bytes;
the retained status is connection state and not counted).
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from tests.agent_harness import NODE, AgentHarness, Operator
from tests.brokers import Collector, Mosquitto, Received
from tests.delivery import spool_stats

BIG_THUMBNAILS = {"thumb_margin": 1.0, "thumb_quality": 95, "thumb_max_side": 1024}  # 2–12 kB each
BASE = f"vigil/{NODE}/"


def budgeted(messages: list[Received]) -> list[Received]:
    """What the budget counts: everything the node publishes except its retained status."""
    return [m for m in messages if m.topic.startswith(BASE) and m.topic != BASE + "status"]


def kind(m: Received) -> str:
    suffix = m.topic[len(BASE) :]
    if suffix == "events":
        return "critical" if json.loads(m.payload).get("priority") == "critical" else "event"
    if suffix == "cmd_result":
        return "critical"  # command replies are critical records
    return suffix.split("/", 1)[0]  # thumbs, telemetry


def test_bytes_per_second_cap_holds_over_every_stretch(tmp_path):
    """A flood of events with thumbnails (the synthetic street as fast as it can be analysed) against
    `max_bytes_per_s = 3000` on a fast local broker: over any stretch between two arrivals no more
    than the rate times its length plus the bucket's burst (two seconds, or one record) arrives; and
    the cap is a cap, not a stall (the spool drains at about that rate)."""
    rate = 3000.0
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.url, [BASE + "#"])
    config = {
        "uplink": {"max_bytes_per_s": rate, "drain_at_end_s": 120},
        "capture": {"source": "synthetic:3", "realtime": False},
        "events": BIG_THUMBNAILS,
    }
    harness = AgentHarness(tmp_path / "state", broker=broker.url, config=config)
    harness.agent.options.max_frames = 300
    try:
        harness.start()
        harness.thread.join(180)  # the agent exits once its spool has drained
        assert not harness.thread.is_alive() and harness.rc == 0, harness.error
    finally:
        harness.stop()
        collector.close()
        broker.stop()
    assert spool_stats(tmp_path / "state")["depth"] == 0
    sent = budgeted(collector.snapshot())
    total = sum(len(m.payload) for m in sent)
    biggest = max(len(m.payload) for m in sent)
    duration = sent[-1].at - sent[0].at
    assert total > 8 * rate, "too little traffic to see a cap"
    slack = 0.5 * rate  # arrival jitter of the subscriber
    worst = 0.0
    for i, first in enumerate(sent):
        got = 0
        for later in sent[i:]:
            got += len(later.payload)
            allowed = rate * (later.at - first.at) + max(2 * rate, biggest) + slack
            worst = max(worst, got - allowed)
    assert worst <= 0, f"{worst:.0f} bytes over the cap in some stretch"
    assert total / duration >= 0.5 * rate, f"drained at {total / duration:.0f} B/s under a {rate:.0f} B/s cap"


class DayBudgetOracle:
    """Checks every message the subscriber received against the tier the node was in when it sent it."""

    def __init__(self, per_day: int) -> None:
        self.per_day = per_day
        self.seen: dict[str, list[float]] = {}  # kind -> the day fractions spent before each one was sent

    def check(self, messages: list[Received], originals: dict[str, dict[str, Any]]) -> list[str]:
        problems = []
        spent = 0
        self.seen = {}
        for m in budgeted(messages):
            used = spent / self.per_day
            what = kind(m)
            self.seen.setdefault(what, []).append(used)
            if what == "thumbs":
                event_id = m.topic.rsplit("/", 1)[1]
                meta = originals[event_id]
                degraded = m.properties.get("vigil-degraded") == "1"
                if used >= 0.9:
                    problems.append(f"a thumbnail went at {used:.0%} of the day's budget")
                elif used > 0.5 and not degraded:
                    problems.append(f"a full thumbnail went at {used:.0%}")
                elif used <= 0.5 and degraded:
                    problems.append(f"a degraded thumbnail at {used:.0%}")
                if degraded and hashlib.sha256(m.payload).hexdigest() == meta["sha256"]:
                    problems.append("flagged degraded but the original bytes")
                if not degraded and hashlib.sha256(m.payload).hexdigest() != meta["sha256"]:
                    problems.append("changed without the vigil-degraded flag")
            elif what == "telemetry" and used >= 0.9:
                problems.append(f"telemetry went at {used:.0%}")
            elif what == "event" and used >= 1.0:
                problems.append(f"event metadata went at {used:.0%}")
            spent += len(m.payload)
        return problems

    def events_at(self, messages: list[Received], low: float, high: float) -> list[dict[str, Any]]:
        """The event bodies that went while the day's spend was in [low, high)."""
        spent, found = 0, []
        for m in budgeted(messages):
            if kind(m) == "event" and low <= spent / self.per_day < high:
                found.append(json.loads(m.payload))
            spent += len(m.payload)
        return found

    def tiers_seen(self, what: str) -> set[str]:
        def tier(used: float) -> str:
            return "<50%" if used <= 0.5 else "50-90%" if used < 0.9 else "90-100%" if used < 1 else ">=100%"

        return {tier(used) for used in self.seen.get(what, [])}


def test_day_budget_degrades_thumbnails_then_keeps_metadata_then_only_critical_across_a_restart(tmp_path):
    per_day = 60_000
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.url, [BASE + "#"], protocol="5")
    operator = Operator(broker.url, client_id="budget-operator")
    state = tmp_path / "state"
    config = {
        "uplink": {"protocol": "5", "max_bytes_per_day": per_day},
        "capture": {"source": "synthetic:3", "realtime": False},  # as fast as it can: plenty to hold back
        "events": BIG_THUMBNAILS,
        "telemetry": {"interval_s": 5},
    }
    oracle = DayBudgetOracle(per_day)
    originals: dict[str, dict[str, Any]] = {}  # event id -> the thumb its event names
    committed: list[dict[str, Any]] = []
    lock = threading.Lock()

    def note(records: list) -> None:
        with lock:
            for r in records:
                if r.stream == "events" and r.body is not None:
                    committed.append(r.body)
                    if r.body.get("thumb"):
                        originals[r.body["id"]] = r.body["thumb"]

    def spent(messages: list[Received]) -> int:
        return sum(len(m.payload) for m in budgeted(messages))

    try:
        harness = AgentHarness(state, broker=broker.url, config=config)
        harness.agent.on_started(lambda running: running.spool.add_listener(note))
        with harness:
            # past the whole day's budget: then a command still gets its (critical) reply
            assert collector.wait_for(lambda ms: spent(ms) >= per_day, 120), "the budget was never used up"
            assert operator.wait_listening(timeout=30)
            assert operator.request("ping")["status"] == "ok"
            with lock:
                before_restart = len(committed)
        delivered_before = len([m for m in budgeted(collector.snapshot()) if kind(m) == "event"])
        statuses = len(operator.statuses())
        # the restart: the day's spend must come back with the agent
        with AgentHarness(state, broker=broker.url, config=config) as again:
            again.running.spool.add_listener(note)
            assert again.wait_records(lambda rs: sum(r["stream"] == "events" for r in rs) >= 5, 60)
            assert operator.wait_listening(after=statuses, timeout=30)
            assert (
                operator.request("ping")["status"] == "ok"
            )  # critical still flows; the events committed before it do not
            stats_after = again.running.spool.stats()
    finally:
        operator.close()
        collector.close()
        broker.stop()
    messages = collector.snapshot()
    with lock:
        problems = oracle.check(messages, originals)
    assert not problems, problems[:10]
    # each tier was really reached and behaved: full, then degraded thumbnails; metadata past 90 %
    assert oracle.tiers_seen("thumbs") == {"<50%", "50-90%"}, oracle.seen.get("thumbs")
    assert "90-100%" in oracle.tiers_seen("event")
    # thumbnails were there to be sent in that band (their events went), and they waited
    held = [e for e in oracle.events_at(messages, 0.9, 1.0) if e.get("thumb")]
    assert len(held) >= 2, "no thumbnail was ready while past 90 %: the band proved nothing"
    assert ">=100%" in oracle.tiers_seen("critical")  # the ping replies went past the whole budget
    # ...and what was held back is still on the node, waiting for tomorrow's budget
    delivered = [m for m in budgeted(messages) if kind(m) == "event"]
    assert len(delivered) == delivered_before, "events went out after the restart, past the day's budget"
    assert len(committed) > before_restart and stats_after["classes"]["event"]["depth"] > 0
    assert stats_after["classes"]["thumb"]["depth"] > 0 and not any(
        c["drops"] for c in stats_after["classes"].values()
    )
