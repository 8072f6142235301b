#!/usr/bin/env python3
"""Uplink economy: what leaves the node for the real clip, against streaming the same clip as H.264.

The whole agent (YOLOX-Nano, motion gate, tracker, privacy redaction with CenterFace from
../shared, spool, MQTT publisher) analyses the 139 s clip and publishes to a local Mosquitto through
a byte-counting link. Counted:

- ``events`` / ``thumbs``: the MQTT PUBLISH packets of event metadata and of thumbnails, exactly as
  published (payload, topic, packet header), from what the broker delivered;
- ``wire``: every byte the agent sent on its TCP connection (also CONNECT, subscriptions, the
  retained status, PINGREQ, PUBACKs are the other direction), measured by the proxy;
- telemetry is not an event cost; its daily volume is reported separately (one record a minute).

The yardstick is the clip encoded by Debian's ffmpeg with libx264 ``-preset veryfast -crf 23``
(what a node streaming this view would send). Three runs: thumbnails on (the default), metadata only
(``events.thumbnails = false``), and metadata only as complete ``vigil.event/1`` records
(``events.schema_revision = "1"``; the default is the compact revision 1.1, docs/events.md), so the
saving of the compact records is measured side by side. Goals: ≤ 2 % with thumbnails, ≤ 0.2 % metadata
only.

    .venv/bin/python bench/economy.py [--record-trace bench/traces/clip.json]

Also writes the event trace the fleet benchmark replays (`--record-trace`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.agentrun import AgentRun, agent_config, mqtt_publish_bytes, run_agent
from bench.common import CLIP, ROOT, SHARED, YOLOX, emit, machine, need, write_trace
from tests.brokers import Mosquitto

CENTERFACE = SHARED / "models" / "centerface" / "centerface.onnx"
TRACE = ROOT / "bench" / "traces" / "clip.json"


def h264_bytes(video: Path, folder: Path) -> dict[str, Any]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("ffmpeg is not installed (apt install ffmpeg)")
    out = folder / "clip-h264.mp4"
    cmd = [ffmpeg, "-loglevel", "error", "-y", "-i", str(video), "-an", "-c:v", "libx264"]
    subprocess.run([*cmd, "-preset", "veryfast", "-crf", "23", str(out)], check=True)
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    return {"bytes": out.stat().st_size, "settings": "libx264 -preset veryfast -crf 23", "ffmpeg": version}


def tally(run: AgentRun) -> dict[str, Any]:
    events = run.by_topic("events")
    thumbs = run.by_topic("thumbs")
    telemetry = run.by_topic("telemetry")
    bodies = [json.loads(m.payload) for m in events]
    return {
        "events": len(events),
        "object_appeared": sum(1 for b in bodies if b.get("type") == "object_appeared"),
        "thumbnails": len(thumbs),
        "event_payload_bytes": sum(len(m.payload) for m in events),
        "event_mqtt_bytes": sum(mqtt_publish_bytes(m.topic, m.payload) for m in events),
        "thumb_payload_bytes": sum(len(m.payload) for m in thumbs),
        "thumb_mqtt_bytes": sum(mqtt_publish_bytes(m.topic, m.payload) for m in thumbs),
        "mean_event_bytes": round(sum(len(m.payload) for m in events) / max(1, len(events))),
        "mean_thumb_bytes": round(sum(len(m.payload) for m in thumbs) / max(1, len(thumbs))),
        "telemetry_record_bytes": max((len(m.payload) for m in telemetry), default=None),
        "schema": sorted({b.get("schema", "?") for b in bodies}),
        "wire_up_bytes": run.wire_up,
        "wire_down_bytes": run.wire_down,
        "redaction": sorted({r for b in bodies for r in ((b.get("thumb") or {}).get("redaction") or [])}),
    }


def trace(run: AgentRun, duration_s: float) -> dict[str, Any]:
    """Event and thumbnail sizes against stream time, for bench/fleet.py to replay."""
    anchor = run.running.factory.mono_for(0.0)
    when: dict[str, float] = {}
    records = []
    for m in run.by_topic("events"):
        body = json.loads(m.payload)
        t = round(body["clock"]["mono"] - anchor, 2)
        when[body["id"]] = t
        records.append({"t": t, "topic": "events", "bytes": len(m.payload), "type": body["type"]})
    for m in run.by_topic("thumbs"):
        event_id = m.topic.rsplit("/", 1)[-1]
        records.append({"t": when.get(event_id, 0.0), "topic": "thumbs", "bytes": len(m.payload)})
    records.sort(key=lambda r: (r["t"], r["topic"]))
    return {"source": CLIP.name, "duration_s": duration_s, "records": records}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record-trace", type=Path, default=TRACE, help="where to write the fleet trace")
    args = parser.parse_args()
    need(CLIP, YOLOX)
    faces = {"faces": {"model": str(CENTERFACE)}} if CENTERFACE.exists() else {}
    out: dict[str, Any] = {"benchmark": "economy", "machine": machine(), "clip": CLIP.name}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out["h264"] = h264_bytes(CLIP, folder)
        out["clip_bytes_as_shipped"] = CLIP.stat().st_size
        broker = Mosquitto(folder / "broker").start()
        try:
            runs = {}
            variants = (
                ("with_thumbnails", {"thumbnails": True}),
                ("metadata_only", {"thumbnails": False}),
                ("metadata_only_v1", {"thumbnails": False, "schema_revision": "1"}),
            )
            for name, events in variants:
                cfg = agent_config(
                    folder / name,
                    broker.url,
                    source=str(CLIP),
                    detect={"model": str(YOLOX)},
                    events=events,
                    privacy=faces,
                )
                runs[name] = run_agent(cfg, broker)
                out[name] = tally(runs[name])
        finally:
            broker.stop()
    duration = 1394 / 10.0
    h264 = out["h264"]["bytes"]
    full, meta = out["with_thumbnails"], out["metadata_only"]
    out["duration_s"] = duration
    out["ratio_with_thumbnails"] = round((full["event_mqtt_bytes"] + full["thumb_mqtt_bytes"]) / h264, 5)
    out["ratio_metadata_only"] = round(meta["event_mqtt_bytes"] / h264, 5)
    out["ratio_wire_with_thumbnails"] = round(full["wire_up_bytes"] / h264, 5)
    out["ratio_metadata_only_v1"] = round(out["metadata_only_v1"]["event_mqtt_bytes"] / h264, 5)
    out["goals"] = {"with_thumbnails": 0.02, "metadata_only": 0.002}
    day = 86400.0 / duration
    telemetry_day = (full["telemetry_record_bytes"] or 0) * 1440
    out["per_day_at_this_rate"] = {
        "h264_mb": round(h264 * day / 1e6, 1),
        "events_and_thumbnails_mb": round(
            (full["event_mqtt_bytes"] + full["thumb_mqtt_bytes"]) * day / 1e6, 2
        ),
        "metadata_only_mb": round(meta["event_mqtt_bytes"] * day / 1e6, 3),
        "telemetry_mb": round(telemetry_day / 1e6, 2),
    }
    if args.record_trace:
        data = trace(runs["with_thumbnails"], duration)
        data["telemetry_bytes_per_min"] = full["telemetry_record_bytes"]
        write_trace(args.record_trace, data)
        out["trace"] = str(args.record_trace.relative_to(ROOT))
    emit(out)


if __name__ == "__main__":
    main()
