#!/usr/bin/env python3
"""Latency: frame captured → the broker's PUBACK for the event it caused, and where the time goes.

The whole agent runs against a local Mosquitto (direct TCP, no proxy) with a camera replay as its
source: frames are released in real time at 10 fps and stamped when released, as a live camera
stamps them, so "captured" is the instant a camera would have handed the frame over. For every
event (appeared and left) the benchmark follows the frame that caused it:

- ``queue``: captured → the analysis loop takes the frame (the one-frame slot);
- ``analysis``: the frame's whole processing (motion gate, detector, tracker, event and thumbnail);
  ``inference`` is the detector's onnxruntime time within it;
- ``spool``: until the spool has committed the event to disk (group commits every
  `spool.commit_interval_ms`, default 200 ms: fewer, larger writes for the SD card);
- ``uplink``: committed → PUBACK (publisher wake-up, MQTT round trip, broker).

Scenes: the real clip (YOLOX-Nano; 12 events in 139 s) and the synthetic street with dense traffic
(vigil-synth; hundreds of events), the latter also with 50 ms group commits to show that trade.

    .venv/bin/python bench/latency.py [--street-seconds 120] [--skip-clip]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.app import Running
from agent.capture import Frame, SceneOptions, SyntheticSource, VideoFileSource
from bench.agentrun import AgentRun, agent_config, run_agent
from bench.common import CLIP, SYNTH_MODEL, YOLOX, AsCamera, emit, machine, need, percentile
from bench.economy import CENTERFACE
from tests.brokers import Mosquitto


class FrameTimes:
    """Wraps the pipeline's per-frame entry point to note when each frame was analysed."""

    def __init__(self) -> None:
        self.by_t: dict[float, tuple[float, float, float]] = {}  # frame.t -> (start, end, inference ms)
        self._lock = threading.Lock()

    def install(self, running: Running) -> None:
        pipeline = running.pipeline
        process = pipeline.process

        def timed(frame: Frame) -> Any:
            detector = pipeline.detector
            runs = int(getattr(detector, "frames", 0))
            start = time.monotonic()
            result = process(frame)
            end = time.monotonic()
            new = int(getattr(detector, "frames", 0)) - runs
            timings = list(getattr(detector, "inference_ms", ()))
            inference = sum(timings[-new:]) if new > 0 else 0.0
            with self._lock:
                self.by_t[round(frame.t, 3)] = (start, end, inference)
            return result

        pipeline.process = timed  # type: ignore[method-assign]


def breakdown(run: AgentRun, frames: FrameTimes) -> dict[str, Any]:
    rows = []
    for rowid, record in run.records.items():
        if record.stream != "events" or rowid not in run.acked:
            continue
        body = json.loads(record.payload)
        captured = body["clock"]["mono"]
        seen = frames.by_t.get(round(captured, 3))  # the event's clock.mono has ms resolution
        if seen is None:  # an event from the end-of-stream flush, not caused by a frame
            continue
        start, end, inference = seen
        rows.append(
            {
                "total": run.acked[rowid] - captured,
                "queue": max(0.0, start - captured),  # captured is rounded to the ms
                "analysis": end - start,
                "inference": inference / 1000.0,
                "spool": run.committed[rowid] - end,
                "uplink": run.acked[rowid] - run.committed[rowid],
            }
        )

    def ms(key: str) -> dict[str, float | None]:
        values = [r[key] * 1000 for r in rows]
        return {
            q: round(v, 1) if (v := percentile(values, n)) is not None else None
            for q, n in (("p50", 50), ("p95", 95), ("p99", 99))
        }

    out: dict[str, Any] = {"events": len(rows)}
    for key in ("total", "queue", "analysis", "inference", "spool", "uplink"):
        out[f"{key}_ms"] = ms(key)
    if rows:
        out["inference_share_of_total"] = round(
            sum(r["inference"] for r in rows) / sum(r["total"] for r in rows), 3
        )
    return out


def scene(
    name: str, broker: Mosquitto, folder: Path, source, model: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    frames = FrameTimes()
    faces = {"faces": {"model": str(CENTERFACE)}} if CENTERFACE.exists() else {}
    cfg = agent_config(folder / name, broker.url, detect={"model": str(model)}, privacy=faces, **sections)
    run = run_agent(cfg, broker, source=source, on_started=frames.install, count_bytes=False)
    dropped = run.running.capture.slot.dropped
    return {**breakdown(run, frames), "frames_dropped_by_slot": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--street-seconds", type=float, default=120.0)
    parser.add_argument("--skip-clip", action="store_true")
    args = parser.parse_args()
    need(CLIP, YOLOX, SYNTH_MODEL)
    out: dict[str, Any] = {"benchmark": "latency", "machine": machine(), "scenes": {}}
    street_frames = int(args.street_seconds * 10)
    busy = SceneOptions(mean_gap_s=1.5)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker").start()
        try:
            if not args.skip_clip:
                out["scenes"]["clip"] = scene(
                    "clip", broker, folder, lambda: AsCamera(VideoFileSource(CLIP)), YOLOX
                )
            for commit_ms in (200, 50):
                out["scenes"][f"street_commit_{commit_ms}ms"] = scene(
                    f"street-{commit_ms}",
                    broker,
                    folder,
                    lambda: AsCamera(SyntheticSource(2, options=busy, max_frames=street_frames)),
                    SYNTH_MODEL,
                    spool={"commit_interval_ms": commit_ms},
                )
        finally:
            broker.stop()
    emit(out)


if __name__ == "__main__":
    main()
