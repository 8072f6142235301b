#!/usr/bin/env python3
"""Motion gating (and motion-region crops): how much of the detector's work the gate saves, and
that it loses no event.

For each scene the agent's pipeline (file or synthetic source, as fast as possible, every frame →
motion gate → detector → tracker → events → spool) runs with the gate off and on, interleaved:

- ``clip``: the real 139 s clip (YOLOX-Nano): people walk in one at a time, long empty stretches;
- ``parked``: the synthetic street with only a parked car (vigil-synth): nothing moves at all;
- ``empty``: the synthetic street with nobody in it;
- ``street``: the synthetic street with its usual traffic (vigil-synth);
- ``far``: the real clip as a camera three times further away sees it (shrunk to 30 % inside a
  1280×720 frame, people ~110 px tall), gate off, gate on, and gate on with ``motion.regions``
  (crops at the model's input size). Its recall is measured against the full-size clip.

Reported per variant: share of frames sent to the detector, detector runs (a frame with two crops
is two runs), CPU seconds of the whole process (process_time: capture, decoding, analysis, spool),
and the `object_appeared` visits. ``analysis_cpu_s`` subtracts what the source alone costs
(decoding the file or drawing the synthetic scene, measured in the same run), which a camera node
pays whatever the gate does. Recall compares visits: a reference visit counts as kept when a
visit with the same label overlaps it in stream time.

    .venv/bin/python bench/motion.py [--scenes clip parked empty street far] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture import CaptureStage, Frame, FrameSource, SceneOptions, SyntheticSource, VideoFileSource
from agent.capture.synthetic import PARKING_ROW, Actor
from agent.clock import Clock
from agent.config.schema import Config, MotionConfig
from agent.detect import OnnxDetector, load_detector
from agent.events import EventEmitter, EventFactory
from agent.motion import MotionGate
from agent.pipeline import Pipeline
from agent.track import Track, Tracker, TrackEvent
from agent.uplink.spool import Spool
from bench.common import CLIP, SYNTH_MODEL, YOLOX, emit, machine, need

SCENES = ("clip", "parked", "empty", "street", "far")
FAR_SCALE = 0.3


@dataclass
class Visit:
    label: str
    start: float
    end: float


class FarSource(VideoFileSource):
    """The clip shrunk to `scale` and placed in a 1280×720 frame: the same people, further away."""

    def __init__(self, path: Path, scale: float = FAR_SCALE) -> None:
        super().__init__(path)
        self.scale = scale
        self._canvas = np.full((720, 1280, 3), 100, np.uint8)

    def read(self) -> Frame | None:
        frame = super().read()
        if frame is None:
            return None
        small = cv2.resize(frame.image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        canvas = self._canvas.copy()
        canvas[300 : 300 + small.shape[0], 500 : 500 + small.shape[1]] = small
        frame.image = canvas
        return frame


def parked_only() -> SceneOptions:
    return SceneOptions(actors=[Actor(1, "car", 0, 470.0, PARKING_ROW, 0.0, 128.0, ((40, 40, 200),))])


def run(source: FrameSource, detector: OnnxDetector, motion: MotionConfig, folder: Path) -> dict[str, Any]:
    """One pass of the pipeline over the whole source."""
    cfg = Config()
    spool = Spool(folder / f"motion-{time.monotonic_ns()}").start()
    spool.add_listener(lambda records: spool.ack(r.rowid for r in records))
    pipeline = Pipeline(
        detector=detector,
        gate=MotionGate(motion),
        tracker=Tracker.from_config(cfg.track),
        factory=EventFactory("bench", Clock(), detector.info),
        emitter=EventEmitter(spool),
        events_cfg=cfg.events,
    )
    appeared: list[Track] = []

    def collect(_frame: Frame, transitions: list[TrackEvent], _tracker: Tracker) -> None:
        appeared.extend(e.track for e in transitions if e.kind == "object_appeared")

    pipeline.track_handlers.append(collect)
    runs_before = detector.frames
    capture = CaptureStage(source, realtime=False).start()
    cpu, wall = time.process_time(), time.perf_counter()
    frames = pipeline.run(capture, threading.Event())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    capture.stop()
    spool.stop()
    gate = pipeline.gate.stats
    return {
        "frames": frames,
        "detector_share": round(gate.detected / max(1, gate.frames), 3),
        "detector_runs": detector.frames - runs_before,
        "reasons": dict(gate.reasons),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "events": pipeline.stats.events,
        "appeared": len(appeared),
        "region_frames": pipeline.stats.region_frames,
        "visits": [Visit(t.label, t.first_seen, t.last_seen) for t in appeared],
    }


def source_cpu(source: FrameSource) -> float:
    """CPU seconds the source alone costs (decoding the file, drawing the synthetic scene)."""
    capture = CaptureStage(source, realtime=False).start()
    cpu = time.process_time()
    while not capture.slot.ended:
        capture.slot.get(timeout=0.2)
    cpu = time.process_time() - cpu
    capture.stop()
    return cpu


def recall(reference: list[Visit], found: list[Visit], slack_s: float = 1.0) -> dict[str, Any]:
    """Share of reference visits overlapped in time by a found visit of the same label."""
    kept = sum(
        any(f.label == r.label and f.start <= r.end + slack_s and r.start <= f.end + slack_s for f in found)
        for r in reference
    )
    return {
        "reference": len(reference),
        "kept": kept,
        "recall": round(kept / len(reference), 3) if reference else None,
    }


def scene(
    name: str,
    sources: Callable[[], FrameSource],
    detector: OnnxDetector,
    variants: dict[str, MotionConfig],
    rounds: int,
    folder: Path,
) -> dict[str, Any]:
    """Every variant `rounds` times, interleaved; CPU is the lowest of the rounds (noise only adds)."""
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(rounds):
        names = list(variants)
        order = names[r % len(names) :] + names[: r % len(names)]
        for variant in order:
            results[variant].append(run(sources(), detector, variants[variant], folder))
    source = min(source_cpu(sources()) for _ in range(rounds))
    out: dict[str, Any] = {"source_cpu_s": round(source, 2)}
    for variant, runs in results.items():
        best = min(runs, key=lambda x: x["cpu_s"])
        out[variant] = {
            **best,
            "cpu_s_runs": [x["cpu_s"] for x in runs],
            "analysis_cpu_s": round(max(0.0, best["cpu_s"] - source), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", nargs="+", choices=SCENES, default=list(SCENES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synthetic-frames", type=int, default=1200, help="two minutes at 10 fps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    need(CLIP, YOLOX, SYNTH_MODEL)
    cfg = Config()
    yolox = load_detector(YOLOX, threads=args.threads, classes=cfg.detect.classes)
    synth = load_detector(SYNTH_MODEL, threads=args.threads, classes=cfg.detect.classes)
    off, on = MotionConfig(enabled=False), MotionConfig()
    n = args.synthetic_frames
    plan = {
        "clip": (lambda: VideoFileSource(CLIP), yolox, {"gate_off": off, "gate_on": on}),
        "parked": (
            lambda: SyntheticSource(1, options=parked_only(), max_frames=n),
            synth,
            {"gate_off": off, "gate_on": on},
        ),
        "empty": (
            lambda: SyntheticSource(1, options=SceneOptions(actors=[]), max_frames=n),
            synth,
            {"gate_off": off, "gate_on": on},
        ),
        "street": (lambda: SyntheticSource(1, max_frames=n), synth, {"gate_off": off, "gate_on": on}),
        "far": (
            lambda: FarSource(CLIP),
            yolox,
            {"gate_off": off, "gate_on": on, "regions": MotionConfig(regions=True)},
        ),
    }
    out: dict[str, Any] = {"benchmark": "motion", "machine": machine(), "threads": args.threads, "scenes": {}}
    reference: dict[str, list[Visit]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenes:
            sources, detector, variants = plan[name]
            result = scene(name, sources, detector, variants, args.rounds, Path(tmp))
            off_run = result["gate_off"]
            source_s = result.pop("source_cpu_s")
            if name == "clip":
                reference["clip"] = off_run["visits"]
            baseline = reference.get("clip") if name == "far" else off_run["visits"]
            if name == "far" and baseline is None:  # the far scene is judged against the full-size clip
                baseline = run(VideoFileSource(CLIP), yolox, off, Path(tmp))["visits"]
            for variant, data in result.items():
                data["recall_vs_reference"] = recall(baseline, data["visits"])
                if variant != "gate_off":
                    data["cpu_ratio_to_gate_off"] = round(data["cpu_s"] / max(1e-9, off_run["cpu_s"]), 3)
                    data["analysis_cpu_ratio_to_gate_off"] = round(
                        data["analysis_cpu_s"] / max(1e-9, off_run["analysis_cpu_s"]), 3
                    )
                    data["runs_ratio_to_gate_off"] = round(
                        data["detector_runs"] / max(1, off_run["detector_runs"]), 3
                    )
                data["visits"] = [[v.label, round(v.start, 1), round(v.end, 1)] for v in data["visits"]]
            out["scenes"][name] = {"source_cpu_s": source_s, **result}
    emit(out)


if __name__ == "__main__":
    main()
