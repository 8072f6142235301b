#!/usr/bin/env python3
"""Fleet: N simulated nodes replaying recorded event traces against one local Mosquitto.

No detector runs here: each simulated node is a plain MQTT 3.1.1 connection (asyncio, one process)
that does what a node's uplink does on the wire: CONNECT, a retained `online` status, then the
trace's events (QoS 1, ~0.6 kB) and thumbnails (QoS 1, ~8 kB) at their recorded times, telemetry
once a minute, PINGREQ when idle. Each node starts the trace at a random phase, so the fleet's load
is smooth, as a city's is. One back-office subscriber takes everything (`vigil/#`, QoS 1), like the
consumer that stores events. Traces (bench/traces/) are recorded from the real agent:

- ``clip.json`` by bench/economy.py (the real clip: a quiet indoor view, ~0.09 events/s);
- ``street.json`` by ``bench/fleet.py --record-street`` (the synthetic street with traffic).

Phases, each measured on its own: a connect storm (every node at once, as after a city-wide power
cut), the realistic rate (1× the trace) and speed-ups of the same traces until the broker no longer
keeps up (PUBACK p95 over 1 s or under 95 % of the offered messages acknowledged). Broker CPU comes
from /proc/<pid>/stat, its memory from /proc/<pid>/status. Per-node bytes/day come from the trace.

    .venv/bin/python bench/fleet.py [--nodes 1000] [--trace street] [--seconds 60]
    .venv/bin/python bench/fleet.py --record-street     # re-record bench/traces/street.json first
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    SYNTH_MODEL,
    emit,
    machine,
    percentile,
    proc_cpu_seconds,
    proc_status_kb,
    read_trace,
    write_trace,
)
from tests.brokers import Mosquitto, make_tls

TRACES = ROOT / "bench" / "traces"
KEEPALIVE_S = 60
NOISE = os.urandom(1 << 16)


# -- MQTT 3.1.1, the few packets a node needs ------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, keepalive: int = KEEPALIVE_S) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, pid: int, payload: bytes, retain: bool = False) -> bytes:
    body = _str(topic) + struct.pack("!H", pid) + payload
    return bytes([0x32 | (1 if retain else 0)]) + _varint(len(body)) + body


def subscribe_packet(pid: int, topic: str) -> bytes:
    body = struct.pack("!H", pid) + _str(topic) + b"\x01"
    return b"\x82" + _varint(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return head, await reader.readexactly(length) if length else b""


def payload(size: int) -> bytes:
    start = random.randrange(0, len(NOISE) - min(size, len(NOISE)))
    return (NOISE[start : start + size] * (size // len(NOISE) + 1))[:size]


# -- the simulated fleet ---------------------------------------------------------------------------
@dataclass
class Tally:
    offered: int = 0
    acked: int = 0
    bytes_offered: int = 0
    latencies: list[float] = field(default_factory=list)
    connected: int = 0
    connect_s: list[float] = field(default_factory=list)
    delivered: int = 0
    errors: int = 0
    late_s: list[float] = field(default_factory=list)  # how late the simulator sent each record


class SimNode:
    def __init__(
        self, index: int, port: int, trace: dict[str, Any], tally: Tally, tls: ssl.SSLContext | None = None
    ) -> None:
        self.id = f"sim-{index:05d}"
        self.port = port
        self.tls = tls
        self.trace = trace
        self.tally = tally
        self.phase = random.uniform(0, trace["duration_s"])
        self.pending: dict[int, float] = {}
        self.next_pid = 1
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task | None = None
        self.last_sent = 0.0

    def _pid(self) -> int:
        pid = self.next_pid
        self.next_pid = pid % 65535 + 1
        return pid

    async def connect(self) -> None:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls)
        writer.write(connect_packet(self.id))
        head, _ = await read_packet(reader)
        if head >> 4 != 2:
            raise RuntimeError(f"{self.id}: expected CONNACK, got {head:#x}")
        self.writer = writer
        self.tally.connected += 1
        self.tally.connect_s.append(time.monotonic() - started)
        self.reader_task = asyncio.create_task(self._read(reader))
        self._send(f"vigil/{self.id}/status", b'{"state":"online"}', retain=True, count=False)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head, body = await read_packet(reader)
                if head >> 4 == 4 and len(body) >= 2:  # PUBACK
                    sent = self.pending.pop(struct.unpack("!H", body[:2])[0], None)
                    if sent is not None:
                        self.tally.acked += 1
                        self.tally.latencies.append(time.monotonic() - sent)
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def _send(self, topic: str, data: bytes, *, retain: bool = False, count: bool = True) -> None:
        assert self.writer is not None
        pid = self._pid()
        now = time.monotonic()
        if count:
            self.pending[pid] = now
            self.tally.offered += 1
            self.tally.bytes_offered += len(data)
        self.writer.write(publish_packet(topic, pid, data, retain))
        self.last_sent = now

    def schedule(self) -> Iterator[tuple[float, str, int]]:
        """(seconds after the start, topic, bytes) of every record, the trace looped from this node's phase."""
        records, duration = self.trace["records"], self.trace["duration_s"]
        passes = 0
        while records:
            for r in records:
                at = r["t"] + passes * duration - self.phase
                if at >= 0:
                    yield at, r["topic"], r["bytes"]
            passes += 1

    async def replay(self, seconds: float, speed: float) -> None:
        """Publish what the trace holds for the next `seconds` (trace time running `speed` times faster)."""
        telemetry = self.trace.get("telemetry_bytes_per_min") or 1000
        started = time.monotonic()
        end = started + seconds
        next_telemetry = started + random.uniform(0, 60.0 / speed)
        upcoming = self.schedule()
        at, topic, size = next(upcoming, (float("inf"), "", 0))
        while time.monotonic() < end:  # a simulator that falls behind stops on time (and says so)
            due = started + at / speed
            wake = min(due, next_telemetry, self.last_sent + KEEPALIVE_S * 0.9)
            if wake > end:
                await asyncio.sleep(max(0.0, end - time.monotonic()))
                return
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            if now >= next_telemetry:
                self._send(f"vigil/{self.id}/telemetry", payload(telemetry))
                next_telemetry += 60.0 / speed
            if now >= due:
                self.tally.late_s.append(now - due)
                suffix = "events" if topic == "events" else f"thumbs/{random.getrandbits(64):016x}"
                self._send(f"vigil/{self.id}/{suffix}", payload(size))
                at, topic, size = next(upcoming, (float("inf"), "", 0))
            elif now - self.last_sent >= KEEPALIVE_S * 0.9 and self.writer is not None:
                self.writer.write(b"\xc0\x00")  # PINGREQ
                self.last_sent = now
            if self.writer is not None and self.writer.transport.get_write_buffer_size() > 1 << 16:
                await self.writer.drain()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.write(b"\xe0\x00")  # DISCONNECT
            self.writer.close()
            await asyncio.gather(self.writer.wait_closed(), return_exceptions=True)
        if self.reader_task is not None:
            self.reader_task.cancel()


async def back_office(
    port: int, tally: Tally, ready: asyncio.Event, stop: asyncio.Event, tls: ssl.SSLContext | None
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(connect_packet("back-office", 600))
    await read_packet(reader)
    writer.write(subscribe_packet(1, "vigil/#"))
    while True:
        head, _ = await read_packet(reader)
        if head >> 4 == 9:  # SUBACK
            ready.set()
            break

    async def consume() -> None:
        while True:
            head, body = await read_packet(reader)
            if head >> 4 == 3:
                tally.delivered += 1
                if (head >> 1) & 3:
                    topic_len = struct.unpack("!H", body[:2])[0]
                    pid = body[2 + topic_len : 4 + topic_len]
                    writer.write(b"\x40\x02" + pid)

    task = asyncio.create_task(consume())
    await stop.wait()
    task.cancel()
    writer.close()


@dataclass
class BrokerMeter:
    pid: int
    cpu: float = 0.0
    wall: float = 0.0

    def start(self) -> None:
        self.cpu, self.wall = proc_cpu_seconds(self.pid), time.monotonic()

    def stop(self) -> dict[str, Any]:
        cpu, wall = proc_cpu_seconds(self.pid) - self.cpu, time.monotonic() - self.wall
        return {"broker_cpu_s": round(cpu, 2), "broker_cpu_percent": round(100 * cpu / wall, 1)}


def phase_result(
    tally: Tally, replay_s: float, drain_s: float, intended: float, meter: dict[str, Any]
) -> dict[str, Any]:
    """Rates over the whole phase: the replay plus the time the last PUBACKs took to come back.

    Publishes are only written into socket buffers during the replay; what counts is what the broker
    acknowledged, over the wall time it took to acknowledge it.
    """
    seconds = replay_s + drain_s
    lat = [x * 1000 for x in tally.latencies]
    p95 = percentile(lat, 95)
    late_p95 = percentile(tally.late_s, 95) or 0.0
    return {
        "seconds": round(seconds, 1),
        "drain_s": round(drain_s, 2),
        "intended_per_s": round(intended, 1),
        # one Python process plays every node: when it falls behind, the broker was not what was tested
        "simulator_late_p95_s": round(late_p95, 3),
        "simulator_kept_pace": tally.offered / replay_s >= 0.9 * intended and late_p95 < 1.0,
        "broker_cpu_us_per_message": round(1e6 * meter["broker_cpu_s"] / max(1, tally.acked), 1),
        "offered": tally.offered,
        "acked_per_s": round(tally.acked / seconds, 1),
        "acked_share": round(tally.acked / max(1, tally.offered), 4),
        "mb_per_s": round(tally.bytes_offered / seconds / 1e6, 3),
        "puback_ms": {
            "p50": round(percentile(lat, 50) or 0, 1),
            "p95": round(p95 or 0, 1),
            "p99": round(percentile(lat, 99) or 0, 1),
        },
        "delivered_to_back_office": tally.delivered,
        "keeps_up": tally.acked >= 0.95 * tally.offered and (p95 or 0) < 1000 and drain_s < 5.0,
        **meter,
    }


async def drain(tally: Tally, limit_s: float) -> float:
    """Wait (polling, bounded) until every offered publish is acknowledged; returns the time taken."""
    started = time.monotonic()
    while tally.acked < tally.offered and time.monotonic() - started < limit_s:
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def run_fleet(
    args: argparse.Namespace, broker: Mosquitto, trace: dict[str, Any], tls: ssl.SSLContext | None
) -> dict[str, Any]:
    assert broker.proc is not None
    meter = BrokerMeter(broker.proc.pid)
    out: dict[str, Any] = {}
    office_tally = Tally()
    ready, stop = asyncio.Event(), asyncio.Event()
    office = asyncio.create_task(back_office(broker.port, office_tally, ready, stop, tls))
    await asyncio.wait_for(ready.wait(), 10)
    rss_idle = proc_status_kb(broker.proc.pid, "VmRSS") or 0
    tally = Tally()
    nodes = [SimNode(i, broker.port, trace, tally, tls) for i in range(args.nodes)]
    meter.start()
    started = time.monotonic()
    results = await asyncio.gather(*(n.connect() for n in nodes), return_exceptions=True)
    storm_s = time.monotonic() - started
    tally.errors = sum(isinstance(r, Exception) for r in results)
    out["connect_storm"] = {
        "nodes": args.nodes,
        "connected": tally.connected,
        "errors": tally.errors,
        "all_connected_s": round(storm_s, 2),
        "connect_ms_p95": round(1000 * (percentile(tally.connect_s, 95) or 0), 1),
        **meter.stop(),
    }
    rss_connected = proc_status_kb(broker.proc.pid, "VmRSS") or 0
    out["broker_rss_kb"] = {
        "idle": rss_idle,
        "connected": rss_connected,
        "per_connection": round((rss_connected - rss_idle) / max(1, tally.connected), 2),
    }
    live = [n for n, r in zip(nodes, results, strict=True) if not isinstance(r, Exception)]
    rate = per_node_day(trace)["messages_per_s"]
    for speed in args.speeds:
        for n in live:
            n.tally = Tally()
        shared = Tally()
        for n in live:
            n.tally = shared
        office_tally.delivered = 0
        meter.start()
        started = time.monotonic()
        await asyncio.gather(*(n.replay(args.seconds, speed) for n in live))
        replay_s = time.monotonic() - started
        drain_s = await drain(shared, limit_s=max(10.0, args.seconds))
        shared.delivered = office_tally.delivered
        result = phase_result(shared, replay_s, drain_s, len(live) * rate * speed, meter.stop())
        out[f"speed_{speed:g}x"] = result
        if not result["keeps_up"] or not result["simulator_kept_pace"]:
            break
    stop.set()
    await asyncio.gather(*(n.close() for n in live), return_exceptions=True)
    await asyncio.gather(office, return_exceptions=True)
    return out


def per_node_day(trace: dict[str, Any]) -> dict[str, Any]:
    """What one node sends per day at the trace's rate (MQTT packets; TCP/IP and TLS not included)."""
    duration = trace["duration_s"]
    scale = 86400.0 / duration
    topic_len = len("vigil/pole-0000/events")
    events = [r for r in trace["records"] if r["topic"] == "events"]
    thumbs = [r for r in trace["records"] if r["topic"] == "thumbs"]
    ev = sum(r["bytes"] + 2 + topic_len + 4 + 2 for r in events)
    th = sum(r["bytes"] + 2 + topic_len + 40 + 4 + 3 for r in thumbs)
    telemetry = 1440 * ((trace.get("telemetry_bytes_per_min") or 1000) + topic_len + 10)
    return {
        "events_per_day": round(len(events) * scale),
        "events_per_s": round(len(events) / duration, 3),
        "messages_per_s": round((len(events) + len(thumbs)) / duration + 1 / 60, 3),
        "metadata_mb": round(ev * scale / 1e6, 2),
        "thumbnails_mb": round(th * scale / 1e6, 2),
        "telemetry_mb": round(telemetry / 1e6, 2),
        "total_mb": round((ev * scale + th * scale + telemetry) / 1e6, 2),
    }


def record_street(path: Path, frames: int) -> None:
    """Run the whole agent on the synthetic street (vigil-synth) and keep its event trace."""
    from bench.agentrun import agent_config, run_agent
    from bench.economy import CENTERFACE
    from bench.economy import trace as make_trace

    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            faces = {"faces": {"model": str(CENTERFACE)}} if CENTERFACE.exists() else {}
            cfg = agent_config(
                Path(tmp) / "node",
                broker.url,
                source="synthetic:1",
                detect={"model": str(SYNTH_MODEL)},
                privacy=faces,
            )
            run = run_agent(cfg, broker, max_frames=frames)
        finally:
            broker.stop()
    data = make_trace(run, frames / cfg.capture.fps)
    data["source"] = "synthetic:1 (vigil-synth)"
    telemetry = [len(m.payload) for m in run.by_topic("telemetry")]
    data["telemetry_bytes_per_min"] = max(telemetry, default=1050)
    write_trace(path, data)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--trace", default="street", help="a name in bench/traces/ (street, clip) or a path")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load phase")
    parser.add_argument("--speeds", type=float, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--plain", dest="tls", action="store_false", help="plain TCP instead of mutual TLS")
    parser.add_argument(
        "--record-street", action="store_true", help="record bench/traces/street.json and exit"
    )
    parser.add_argument(
        "--street-frames", type=int, default=6000, help="frames recorded (10 minutes at 10 fps)"
    )
    args = parser.parse_args()
    if args.record_street:
        record_street(TRACES / "street.json", args.street_frames)
        print(f"wrote {TRACES / 'street.json'}")
        return
    path = Path(args.trace) if args.trace.endswith(".json") else TRACES / f"{args.trace}.json"
    if not path.exists():
        sys.exit(f"no trace {path}: run bench/economy.py (clip) or bench/fleet.py --record-street first")
    trace = read_trace(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.nodes * 2 + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), max(hard, want)), max(hard, want)))
    random.seed(1)
    out: dict[str, Any] = {
        "benchmark": "fleet",
        "machine": machine(),
        "trace": path.name,
        "trace_source": trace.get("source"),
        "nodes": args.nodes,
        "per_node_day": per_node_day(trace),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tls = None
        context = None
        if args.tls:
            tls = make_tls(Path(tmp) / "tls", client_cn="sim-node")
            context = ssl.create_default_context(cafile=str(tls.ca))
            context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        out["transport"] = "mqtts (TLS 1.3, client certificates, ECDSA P-256)" if tls else "mqtt (plain TCP)"
        broker = Mosquitto(Path(tmp) / "broker", tls=tls, extra="max_queued_messages 100000\n").start()
        try:
            out["phases"] = asyncio.run(run_fleet(args, broker, trace, context))
        finally:
            broker.stop()
    emit(out)


if __name__ == "__main__":
    main()
