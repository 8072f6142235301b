#!/usr/bin/env python3
"""Back-office ingest: how fast `vigil-fleet ingest` stores what a fleet sends, next to a bare paho
subscriber on the same broker, and how long a 1,000-node backlog takes to drain after an outage.

Each round builds the same backlog in a persistent session while the consumer is away: N nodes
replaying the busy street trace (bench/traces/street.json: events, thumbnails, telemetry) for S
seconds each, at random phases. Then one consumer connects and drains it; the clock runs from its
connect to the last message stored (ingest) or received (bare subscriber):

- bare: paho-mqtt, MQTT 5, QoS 1, acknowledging as it reads and storing nothing: the broker and
  network limit any consumer is measured against;
- sqlite / postgresql: the real ingest (fleet.ingest.service.Ingest, default settings), acknowledging
  each message only after the transaction holding it committed (SQLite: WAL, synchronous=FULL;
  PostgreSQL 15 from Debian with its defaults, fsync on, on this machine's disk).

Variants run interleaved, round by round, and are reported as ratios to the bare subscriber. The
drain time after a one-hour outage follows from the measured drain rate D and the fleet's live rate
L (which keeps arriving while the backlog drains): outage × L / (D − L).

    .venv/bin/python bench/ingest.py [--nodes 1000] [--seconds 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import emit, interleave, machine, ratios, read_trace, summary  # noqa: E402
from fleet.eventschema import EventValidator  # noqa: E402
from fleet.ingest.mqtt import BrokerUrl, SessionOptions  # noqa: E402
from fleet.ingest.service import Ingest, IngestOptions  # noqa: E402
from fleet.store.db import Database  # noqa: E402
from fleet.wire import WireParser  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

TRACE = ROOT / "bench" / "traces" / "street.json"
FILTERS = ["vigil/+/events", "vigil/+/thumbs/+", "vigil/+/status", "vigil/+/telemetry", "vigil/+/cmd_result"]
OUTAGE_S = 3600
FLEET_NODES = 1000  # the fleet whose one-hour backlog is computed (whatever --nodes the backlog was built with)


def backlog(nodes: int, seconds: float, seed: int) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """The fleet's messages over `seconds`, in time order: the trace per node at a random phase."""
    trace = read_trace(TRACE)
    records, duration = trace["records"], trace["duration_s"]
    rng = random.Random(seed)
    timed: list[tuple[float, str, bytes]] = []
    counts = {"events": 0, "thumbs": 0, "telemetry": 0}
    for n in range(nodes):
        node = f"pole-{n:04d}"
        phase = rng.uniform(0, duration)
        seq = 0
        pending_thumb: tuple[str, bytes] | None = None
        for k in range(int(seconds // duration) + 2):
            for r in records:
                t = r["t"] + k * duration - phase
                if not 0 <= t < seconds:
                    continue
                if r["topic"] == "events":
                    seq += 1
                    thumb = _thumb(r, records, rng)
                    body = _event(node, seq, r["bytes"], thumb)
                    timed.append((t, f"vigil/{node}/events", body))
                    counts["events"] += 1
                    pending_thumb = (json.loads(body)["id"], thumb) if thumb else None
                elif r["topic"] == "thumbs" and pending_thumb is not None:
                    event_id, image = pending_thumb
                    timed.append((t + 0.01, f"vigil/{node}/thumbs/{event_id}", image))
                    counts["thumbs"] += 1
                    pending_thumb = None
        for t in range(int(rng.uniform(0, 60)), int(seconds), 60):
            timed.append(
                (float(t), f"vigil/{node}/telemetry", _telemetry(node, t, trace["telemetry_bytes_per_min"]))
            )
            counts["telemetry"] += 1
    timed.sort(key=lambda x: x[0])
    return [(topic, payload) for _, topic, payload in timed], counts


def _thumb(record: dict[str, Any], records: list[dict[str, Any]], rng: random.Random) -> bytes | None:
    if record.get("type") != "object_appeared":
        return None
    size = next((r["bytes"] for r in records if r["topic"] == "thumbs" and r["t"] == record["t"]), 1200)
    return b"\xff\xd8\xff\xe0" + rng.randbytes(max(16, size - 4))


def _event(node: str, seq: int, size: int, thumb: bytes | None) -> bytes:
    body: dict[str, Any] = {
        "schema": "vigil.event/1",
        "id": str(uuid.uuid4()),
        "node": node,
        "seq": seq,
        "type": "object_appeared",
        "priority": "normal",
        "label": "car",
        "score": 0.91,
        "bbox": [0.1, 0.2, 0.3, 0.6],
        "track": seq,
        "ts": "2026-11-27T10:00:00.000Z",
        "first_seen": "2026-11-27T10:00:00.000Z",
        "last_seen": "2026-11-27T10:00:00.000Z",
        "clock": {"source": "ntp", "trusted": True, "boot": "b", "mono": 1.0},
        "model": {"name": "vigil-synth", "sha256": "0" * 64},
        "location": {"lat": 52.37, "lon": 4.89, "mode": "static"},
        "thumb": None
        if thumb is None
        else {"sha256": hashlib.sha256(thumb).hexdigest(), "bytes": len(thumb), "size": [120, 90]},
    }
    raw = json.dumps(body, separators=(",", ":"))
    if len(raw) < size:
        body["pad"] = "x" * (size - len(raw) - 9)
    return json.dumps(body, separators=(",", ":")).encode()


def _telemetry(node: str, t: int, size: int) -> bytes:
    body = {
        "schema": "vigil.telemetry/1",
        "node": node,
        "ts": f"2026-11-27T10:{t // 60 % 60:02d}:00Z",
        "uptime_s": t,
        "spool": {"depth": 0, "bytes": 0, "classes": {}},
    }
    raw = json.dumps(body, separators=(",", ":"))
    body["pad"] = "x" * max(0, size - len(raw) - 9)
    return json.dumps(body, separators=(",", ":")).encode()


# -- MQTT plumbing ----------------------------------------------------------------------------------------
def _client(client_id: str, **kw: Any) -> paho.Client:
    return paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, **kw
    )


def make_session(port: int, client_id: str) -> None:
    """A persistent session subscribed to the fleet's topics, then left: the broker queues for it."""
    done = threading.Event()
    client = _client(client_id)
    client.on_subscribe = lambda *a: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    client.subscribe([(f, 1) for f in FILTERS])
    assert done.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish the backlog as fast as the broker takes it (QoS 1, a wide in-flight window)."""
    acked = threading.Semaphore(0)
    client = _client(f"fleet-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1)
    for _ in messages:
        assert acked.acquire(timeout=120), "the broker stopped acknowledging"
    client.disconnect()
    client.loop_stop()


def drain_bare(port: int, client_id: str, total: int) -> float:
    got = threading.Semaphore(0)
    client = _client(client_id)
    client.on_message = lambda *a: got.release()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    started = time.monotonic()
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    for _ in range(total):
        assert got.acquire(timeout=120), "the bare subscriber stopped receiving"
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


def drain_ingest(port: int, client_id: str, url: str, total: int) -> float:
    db = Database.open(url)
    parser = WireParser("vigil", EventValidator())
    session = SessionOptions([BrokerUrl("127.0.0.1", port, False)], client_id, parser.filters(), protocol="5")
    ingest = Ingest(db, parser, session, IngestOptions(heartbeat_s=60))
    started = time.monotonic()
    ingest.start()
    try:
        while True:
            s = ingest.stats
            if s.stored + s.thumbs + s.records + s.duplicates >= total:
                return time.monotonic() - started
            if time.monotonic() - started > 600:
                raise RuntimeError(f"ingest into {db.kind} stalled: {ingest.status()}")
            time.sleep(
                0.02
            )  # sampling the ingest's counters; the clock resolution is far below the drain time
    finally:
        ingest.stop()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="backlog per round: seconds of the fleet's traffic"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    messages, counts = backlog(args.nodes, args.seconds, seed=14)
    total = len(messages)
    live_rate = total / args.seconds  # the fleet's messages per second, live
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-ingest-"))
    broker = Mosquitto(work / "broker", extra="max_queued_messages 0\nmax_queued_bytes 0\n").start()
    pg = PostgresServer().start()
    round_no = {"n": 0}

    def variant(kind: str) -> float:
        round_no["n"] += 1
        client_id = f"{kind}-{round_no['n']}"
        make_session(broker.port, client_id)
        publish_all(broker.port, messages)
        if kind == "bare":
            elapsed = drain_bare(broker.port, client_id, total)
        else:
            url = f"sqlite:///{work / f'{client_id}.db'}" if kind == "sqlite" else pg.create_database()
            elapsed = drain_ingest(broker.port, client_id, url, total)
        print(
            f"{kind}: {total} messages in {elapsed:.1f} s ({total / elapsed:.0f}/s)",
            file=sys.stderr,
            flush=True,
        )
        return total / elapsed

    try:
        per_s = interleave(
            {k: (lambda k=k: variant(k)) for k in ("bare", "sqlite", "postgresql")}, args.rounds
        )
    finally:
        broker.stop()
        pg.remove()
    events_share = counts["events"] / total
    result: dict[str, Any] = {
        "machine": machine(),
        "backlog": {
            "nodes": args.nodes,
            "seconds": args.seconds,
            "messages": total,
            **counts,
            "live_messages_per_s": round(live_rate, 1),
        },
        "messages_per_s": {k: summary(v, 0) for k, v in per_s.items()},
        "events_per_s": {k: summary([x * events_share for x in v], 0) for k, v in per_s.items()},
        "ratio_sqlite_to_bare": ratios(per_s["sqlite"], per_s["bare"]),
        "ratio_postgresql_to_bare": ratios(per_s["postgresql"], per_s["bare"]),
        "after_one_hour_outage": {},
    }
    fleet_live = live_rate / args.nodes * FLEET_NODES  # the 1,000-node fleet's live messages per second
    result["after_one_hour_outage"]["fleet"] = {"nodes": FLEET_NODES, "live_messages_per_s": round(fleet_live, 1)}
    for kind in ("sqlite", "postgresql", "bare"):
        rate = summary(per_s[kind], 1)["median"]
        spare = rate - fleet_live
        result["after_one_hour_outage"][kind] = {
            "backlog_messages": round(fleet_live * OUTAGE_S),
            "drain_s": round(OUTAGE_S * fleet_live / spare) if spare > 0 else None,
            "headroom_over_live": round(rate / fleet_live, 2),
        }
    emit(result)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
