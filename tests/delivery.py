"""Checks shared by the delivery tests: what the node says it committed (`agent spool stats`, the real
command) against what an independent subscriber received. Nothing here publishes for the agent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.brokers import Collector, Received
from tests.conftest import run_agent


def spool_stats(state: Path) -> dict[str, Any]:
    """`agent spool stats --json` for a state directory (read-only; the agent may be stopped)."""
    res = run_agent("spool", "stats", "--state-dir", str(state), "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def events_by_seq(messages: list[Received], node: str) -> dict[int, set[str]]:
    """seq -> the ids it arrived with, from the event messages a subscriber received."""
    found: dict[int, set[str]] = {}
    for m in messages:
        if m.topic == f"vigil/{node}/events":
            body = json.loads(m.payload)
            found.setdefault(int(body["seq"]), set()).add(str(body["id"]))
    return found


def thumbnails(messages: list[Received], node: str) -> dict[str, bytes]:
    """event id -> the thumbnail bytes received for it."""
    prefix = f"vigil/{node}/thumbs/"
    return {m.topic[len(prefix) :]: m.payload for m in messages if m.topic.startswith(prefix)}


def thumbs_named(messages: list[Received], node: str) -> dict[str, dict[str, Any]]:
    """event id -> the `thumb` metadata of every received event that names one."""
    named = {}
    for m in messages:
        if m.topic == f"vigil/{node}/events" and (body := json.loads(m.payload)).get("thumb"):
            named[str(body["id"])] = body["thumb"]
    return named


def complete(messages: list[Received], node: str, last: int) -> bool:
    """Seqs 1..last and the thumbnail of every one of them that has one have arrived."""
    return set(range(1, last + 1)) <= set(events_by_seq(messages, node)) and set(
        thumbs_named(messages, node)
    ) <= set(thumbnails(messages, node))


def assert_all_delivered(
    collector: Collector, state: Path, node: str, *, exact_thumbs: bool = True, timeout: float = 30.0
) -> dict[str, Any]:
    """Every event the node ever committed (its spool's seq counter) reached the subscriber, each seq
    with one id, and every thumbnail (the very bytes its event names when `exact_thumbs`; a slow link
    may have sent a smaller copy); the node's spool is empty and counted no drop. Returns the stats.

    Waits up to `timeout` for the broker to hand the subscriber what it has acknowledged."""
    stats = spool_stats(state)
    last = stats["seq"].get("events", 0)
    assert last > 0, "the node committed no event"
    collector.wait_for(lambda ms: complete(ms, node, last), timeout)
    messages = collector.snapshot()
    got = events_by_seq(messages, node)
    missing = sorted(set(range(1, last + 1)) - set(got))
    assert not missing, f"{len(missing)} of {last} seqs never arrived: {missing[:20]}"
    assert max(got) == last, f"seq {max(got)} arrived but the node committed only {last}"
    assert all(len(ids) == 1 for ids in got.values()), {s: i for s, i in got.items() if len(i) > 1}
    received = thumbnails(messages, node)
    for event_id, meta in thumbs_named(messages, node).items():
        assert event_id in received, f"the thumbnail of event {event_id} never arrived"
        assert received[event_id][:2] == b"\xff\xd8", "not a JPEG"
        if exact_thumbs:
            assert hashlib.sha256(received[event_id]).hexdigest() == meta["sha256"]
    assert stats["depth"] == 0, stats
    assert all(not cls["drops"] for cls in stats["classes"].values()), stats["classes"]
    return stats
