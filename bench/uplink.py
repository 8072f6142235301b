#!/usr/bin/env python3
"""Uplink benchmark: backlog drain vs a bare paho QoS 1 loop (and paho fed by a thread, as the agent
does), latency under 2 kB/s, disk bytes per event.

    .venv/bin/python bench/uplink.py [--events 8333] [--thumbs 1667] [--rounds 5]

Starts its own Mosquitto on a free port. Prints one JSON object. Comparisons are ratios measured side
by side in the same run, because shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config.schema import UplinkConfig  # noqa: E402
from agent.uplink.link import LinkProxy, LinkState  # noqa: E402
from agent.uplink.mqtt import BrokerUrl, MqttPublisher  # noqa: E402
from agent.uplink.spool import Outgoing, Priority, Spool, SpoolLimits  # noqa: E402
from bench.common import emit, machine, summary  # noqa: E402
from bench.wearmeter import LoopDisk, syncfs  # noqa: E402
from tests.brokers import Collector, Mosquitto  # noqa: E402

EVENT = {
    "schema": "vigil.event/1",
    "node": "bench",
    "type": "object_appeared",
    "priority": "normal",
    "label": "person",
    "score": 0.91,
    "bbox": [0.1, 0.2, 0.3, 0.6],
    "track": 7,
    "ts": "2026-11-27T10:00:00.000Z",
    "first_seen": "2026-11-27T10:00:00.000Z",
    "last_seen": "2026-11-27T10:00:00.000Z",
    "clock": {"source": "ntp", "trusted": True},
    "model": {"name": "yolox-nano", "sha256": "0" * 64},
    "thumb": None,
    "location": None,
}
THUMB = os.urandom(6000)


def fill(spool: Spool, events: int, thumbs: int) -> int:
    for n in range(events):
        group = [Outgoing("events", Priority.EVENT, "events", {**EVENT, "n": n})]
        if n < thumbs:
            group.append(Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", THUMB, sequenced=False))
        spool.accept(group)
        if n % 500 == 499:
            spool.flush(60)  # a backlog builds over hours, not in one burst past the intake queue
    spool.flush(60)
    return spool.stats()["depth"]


def drain_with_agent(broker: Mosquitto, folder: Path, events: int, thumbs: int) -> dict:
    """The spool and publisher drain a backlog: timed from the connection to the last PUBACK, like the
    bare loop below (deleting the delivered records goes on in the background, as on a node)."""
    spool = Spool(folder / f"drain-{time.monotonic_ns()}", limits=SpoolLimits(commit_interval_s=0.2)).start()
    records = fill(spool, events, thumbs)
    payload_bytes = sum(len(r.payload) for r in spool.next_records(records + 10))
    done = threading.Event()
    publisher = MqttPublisher.from_config(spool, UplinkConfig(broker=broker.url), "bench")
    acked = [0]

    def count(_records) -> None:  # the spool's commits, to know when every record is acknowledged
        if publisher.published >= records:
            done.set()

    spool.add_listener(count)
    publisher.start()
    while not publisher.connected:
        time.sleep(0.001)  # polling a flag set by the publisher's thread; not synchronisation of our own
    started = time.perf_counter()
    while publisher.published < records and not done.wait(0.01):
        pass
    elapsed = time.perf_counter() - started
    acked[0] = publisher.published
    assert spool.wait_drained(60), "spool did not drain"
    publisher.stop()
    spool.stop()
    return {
        "records": records,
        "bytes": payload_bytes,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed, 1),
        "mb_per_s": round(payload_bytes / elapsed / 1e6, 3),
    }


def bare_payloads(events: int, thumbs: int) -> list[tuple[str, bytes]]:
    """The backlog as (topic, payload) pairs, built before the clock starts."""
    payloads = []
    for n in range(events):
        payloads.append(
            ("vigil/bare/events", json.dumps({**EVENT, "n": n, "id": "x" * 36, "seq": n}).encode())
        )
        if n < thumbs:
            payloads.append((f"vigil/bare/thumbs/{n}", THUMB))
    return payloads


def drain_with_bare_paho(broker: Mosquitto, events: int, thumbs: int, inflight: int = 20) -> dict:
    """The floor: publish the same payloads with QoS 1 and a 20-message window, nothing durable."""
    payloads = bare_payloads(events, thumbs)
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare")
    client.max_inflight_messages_set(inflight)
    done = threading.Event()
    acked = [0]

    def on_publish(*_args):
        acked[0] += 1
        if acked[0] == len(payloads):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    started = time.perf_counter()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    size = sum(len(p) for _, p in payloads)
    return {
        "records": len(payloads),
        "bytes": size,
        "seconds": round(elapsed, 3),
        "records_per_s": round(len(payloads) / elapsed, 1),
        "mb_per_s": round(size / elapsed / 1e6, 3),
    }


def latency_under_brownout(broker: Mosquitto, folder: Path, rate_bps: int = 2000, live: int = 20) -> dict:
    spool = Spool(folder / "brown", limits=SpoolLimits(commit_interval_s=0.05)).start()
    fill(spool, 40, 40)  # backlog from an outage: events with thumbnails
    time.sleep(12)  # the outage lasts long enough for these to count as backlog (older than 10 s)
    proxy = LinkProxy(("127.0.0.1", broker.port)).start()
    proxy.set_state(LinkState("up", rate_bps=rate_bps))
    collector = Collector(broker.url, ["vigil/bench/events"], client_id="lat")
    publisher = MqttPublisher.from_config(
        spool,
        UplinkConfig(broker=f"mqtt://127.0.0.1:{proxy.address[1]}"),
        "bench",
        broker=BrokerUrl("127.0.0.1", proxy.address[1], False),
    ).start()
    sent: dict[int, float] = {}
    for n in range(live):
        spool.accept(
            [
                Outgoing("events", Priority.EVENT, "events", {**EVENT, "live": n}),
                Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", THUMB, sequenced=False),
            ]
        )
        spool.flush()
        sent[41 + n] = time.monotonic()
        time.sleep(1.0)
    collector.wait_for(lambda ms: {json.loads(m.payload)["seq"] for m in ms} >= set(sent), 120)
    lat = sorted(
        m.at - sent[json.loads(m.payload)["seq"]]
        for m in collector.snapshot()
        if json.loads(m.payload)["seq"] in sent
    )
    publisher.stop()
    proxy.stop()
    collector.close()
    spool.stop()
    return {
        "link_bytes_per_s": rate_bps,
        "backlog_events": 40,
        "live_events": live,
        "metadata_latency_s_p50": round(statistics.median(lat), 2),
        "metadata_latency_s_p95": round(lat[int(0.95 * (len(lat) - 1))], 2),
        "degraded_thumbnails": publisher.degraded,
    }


def disk_bytes_per_event(folder: Path, events: int = 600, warmup: int = 700) -> dict:
    """Bytes written to the device per accepted event under sustained load (20 events/s, each with a
    4 kB thumbnail), steady state: each event acknowledged as soon as it is committed, so deletions
    are counted too. The spool sits on its own ext4 file system on a loop device (bench/wearmeter.py).
    A 32 MB budget makes 1 MB segments, so the warm-up fills and retires a few and the window sees
    segments start in recycled files, as on a node that has run for a while (a 256 MB budget: 8 MB
    segments, a few hours of a busy street). /proc/self/io is no instrument here: on kernels whose
    page cache keeps large folios it counts whole folios per small write."""
    reason = LoopDisk.unavailable()
    if reason is not None:
        return {"skipped": reason}
    with LoopDisk(folder / "disk-loop") as disk:
        limits = SpoolLimits(commit_interval_s=0.2, budget_bytes=32 << 20)
        spool = Spool(disk.mnt / "spool", limits=limits).start()
        spool.add_listener(lambda records: spool.ack(r.rowid for r in records))  # a good link: PUBACK at once
        segments = spool._store._log  # the bench reads the log's own counters

        def offer(count: int) -> None:
            for n in range(count):  # a busy street: 20 events/s with thumbnails
                spool.accept(
                    [
                        Outgoing("events", Priority.EVENT, "events", {**EVENT, "n": n}),
                        Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", THUMB[:4000], sequenced=False),
                    ]
                )
                time.sleep(0.05)
            spool.flush()

        offer(warmup)
        syncfs(disk.mnt)
        written, zeros, accepted, commits = disk.written(), segments.zero_filled, spool.bytes_accepted, spool.commits
        first = max(segments.segments)
        offer(events)
        syncfs(disk.mnt)
        total = disk.written() - written
        payload = spool.bytes_accepted - accepted
        out = {
            "events": events,
            "payload_bytes_per_event": round(payload / events),
            "disk_bytes_per_event": round(total / events),
            "times_payload": round(total / payload, 2),
            "segments_started": max(segments.segments) - first,
            "zero_filled_bytes": segments.zero_filled - zeros,
            "commits": spool.commits - commits,
            "events_per_commit": round(events / max(1, spool.commits - commits), 1),
        }
        spool.stop()
    return out


def drain_with_fed_paho(broker: Mosquitto, events: int, thumbs: int, inflight: int = 20) -> dict:
    """The agent's thread layout without the spool: a second thread hands paho the same payloads in a
    window of 4 × `inflight` and is woken once per `inflight` PUBACKs, as the publisher is. The gap
    between this and the bare loop is what the layout costs; the rest is the spool's read-back and the
    publisher's bookkeeping."""
    payloads = bare_payloads(events, thumbs)
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fed")
    client.max_inflight_messages_set(inflight)
    lock, wake = threading.Lock(), threading.Event()
    counts = {"acked": 0, "unseen": 0}

    def on_publish(*_args):
        with lock:
            counts["acked"] += 1
            counts["unseen"] += 1
            batch = counts["unseen"] >= inflight or counts["acked"] == len(payloads)
        if batch:
            wake.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    started = time.perf_counter()
    sent = handed = 0
    while True:
        with lock:
            handed -= counts["unseen"]
            counts["unseen"] = 0
            acked = counts["acked"]
        if acked >= len(payloads):
            break
        while handed < 4 * inflight and sent < len(payloads):
            client.publish(*payloads[sent], qos=1)
            sent += 1
            handed += 1
        wake.wait(0.05)
        wake.clear()
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return {"records": len(payloads), "seconds": round(elapsed, 3), "records_per_s": round(len(payloads) / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=8333, help="backlog events (with --thumbs: 10,000 records)")
    parser.add_argument("--thumbs", type=int, default=1667)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved drain rounds (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker").start()
        try:
            bares, fed, ours = [], [], []
            for _ in range(args.rounds):  # side by side, interleaved: the machine's noise hits all three
                bares.append(drain_with_bare_paho(broker, args.events, args.thumbs))
                fed.append(drain_with_fed_paho(broker, args.events, args.thumbs))
                ours.append(drain_with_agent(broker, folder, args.events, args.thumbs))
            brownout = latency_under_brownout(broker, folder)
        finally:
            broker.stop()
        disk = disk_bytes_per_event(folder)
    ratio = [o["records_per_s"] / b["records_per_s"] for o, b in zip(ours, bares, strict=True)]
    fed_ratio = [f["records_per_s"] / b["records_per_s"] for f, b in zip(fed, bares, strict=True)]
    emit(
        {
            "benchmark": "uplink",
            "machine": machine(),
            "backlog_drain": {
                "vigil": sorted(ours, key=lambda r: r["records_per_s"])[len(ours) // 2],
                "bare_paho_qos1": sorted(bares, key=lambda r: r["records_per_s"])[len(bares) // 2],
                "ratio_records_per_s": summary(ratio, 3),
                "paho_fed_by_a_thread": sorted(fed, key=lambda r: r["records_per_s"])[len(fed) // 2],
                "ratio_fed_to_bare": summary(fed_ratio, 3),
            },
            "brownout_2kBps": brownout,
            "disk": disk,
        }
    )


if __name__ == "__main__":
    main()
