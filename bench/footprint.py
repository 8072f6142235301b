#!/usr/bin/env python3
"""Footprint: start-up time to the first analysed frame, peak memory, CPU of an idle node.

Each measurement runs the whole agent (every stage: spool, health, thermal, control, privacy; no
broker, no status page) in a fresh Python process, with a camera replay as its source so the
source itself costs nothing (frames decoded into memory first, then released at 10 fps):

- ``startup``: from the `exec` of a new interpreter to the first analysed frame (imports, config,
  model load and session creation, stages); with YOLOX-Nano and with vigil-synth; three runs;
- ``idle``: a static scene for `--seconds` after a 10 s warm-up: the empty room of the real clip
  (YOLOX-Nano) and the synthetic street with only a parked car (vigil-synth); motion gate on, and
  off for comparison. CPU is the process's CPU time per wall second (100 % = one core);
- peak RSS (VmHWM) of each of those processes, and of one analysing the real clip in real time.

    .venv/bin/python bench/footprint.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CLIP, SYNTH_MODEL, YOLOX, emit, machine, need


def child(args: argparse.Namespace) -> None:
    """One agent process; prints one JSON line with its own figures."""
    from agent.app import Agent, RunOptions
    from agent.capture import VideoFileSource
    from agent.capture.synthetic import PARKING_ROW, Actor, SceneOptions, SyntheticScene
    from agent.config.schema import Config
    from bench.agentrun import custom_source
    from bench.common import AsCamera, MemorySource, decode

    imported = time.monotonic()
    images = []
    if args.scene == "room":  # the clip's first frames: the empty room, with real sensor noise
        images = decode(CLIP, 20)
    elif args.scene == "parked":  # the noise pattern of the synthetic scene repeats every 8 frames
        parked = Actor(1, "car", 0, 470.0, PARKING_ROW, 0.0, 128.0, ((40, 40, 200),))
        scene = SyntheticScene(1, options=SceneOptions(actors=[parked]))
        images = [scene.render(i)[0] for i in range(16)]
    replay_mb = sum(image.nbytes for image in images) / 2**20
    model = YOLOX if args.model == "yolox" else SYNTH_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate(
            {
                "node": {"id": "footprint", "state_dir": tmp},
                "detect": {"model": str(model)},
                "motion": {"enabled": not args.gate_off},
                "http": {"listen": "off"},
                "log": {"level": "warning"},
            }
        )
        node = Agent(cfg, RunOptions(print_events=False, install_signal_handlers=False))
        first = threading.Event()
        marks: dict[str, float] = {}

        def on_started(running: Any) -> None:
            marks["started"] = time.monotonic()

            def observer(frame: Any, detections: Any, tracker: Any) -> None:
                if not first.is_set():
                    marks["first_frame"] = time.monotonic()
                    first.set()

            running.pipeline.observers.append(observer)

        node.on_started(on_started)

        def camera() -> AsCamera:
            if args.scene == "clip":  # decoded as it plays, like a network camera's stream
                return AsCamera(VideoFileSource(CLIP))
            return AsCamera(MemorySource(images), fps=10.0, loop=True)

        source_started = time.monotonic()
        with custom_source(camera):
            worker = threading.Thread(target=node.run, name="agent", daemon=True)
            worker.start()
            first.wait(120)
        ready = time.monotonic()
        window: dict[str, float] = {}
        if args.seconds:
            time.sleep(min(10.0, args.seconds))  # warm-up: background model settles, first keyframes pass
            running = node.running
            assert running is not None
            cpu, wall, runs = time.process_time(), time.monotonic(), running.pipeline.detector.frames
            frames = running.pipeline.stats.frames
            deadline = wall + args.seconds
            while time.monotonic() < deadline and worker.is_alive():
                time.sleep(0.5)  # measuring a window of wall time, not waiting for the agent
            elapsed = time.monotonic() - wall
            window = {
                "cpu_percent": round(100 * (time.process_time() - cpu) / elapsed, 2),
                "detector_runs_per_s": round((running.pipeline.detector.frames - runs) / elapsed, 2),
                "frames_per_s": round((running.pipeline.stats.frames - frames) / elapsed, 2),
            }
        node.stop_event.set()
        worker.join(10)
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    print(
        json.dumps(
            {
                "imports_done": imported,
                "agent_started": marks.get("started"),
                "first_frame": marks.get("first_frame"),
                "source_opened": source_started,
                "ready": ready,
                "peak_rss_mb": round(hwm / 1024, 1) if hwm else None,
                "replay_buffer_mb": round(replay_mb, 1),
                **window,
            }
        )
    )


def spawn(*extra: str) -> dict[str, Any]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, __file__, "--child", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "0"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"child failed: {out.stderr[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["spawned"] = started
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each idle measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene", default="room", choices=["room", "parked", "clip"], help=argparse.SUPPRESS)
    parser.add_argument("--model", default="yolox", choices=["yolox", "synth"], help=argparse.SUPPRESS)
    parser.add_argument("--gate-off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    need(CLIP, YOLOX, SYNTH_MODEL)
    out: dict[str, Any] = {"benchmark": "footprint", "machine": machine()}
    startup: dict[str, Any] = {}
    for model in ("yolox", "synth"):
        runs = [
            spawn("--model", model, "--scene", "room" if model == "yolox" else "parked", "--seconds", "0")
            for _ in range(3)
        ]
        # the replay's own preparation (decoding a few frames into memory) is not the agent's start-up
        total = [r["first_frame"] - r["spawned"] - (r["source_opened"] - r["imports_done"]) for r in runs]
        startup[model] = {
            "to_first_frame_s": round(statistics.median(total), 2),
            "runs_s": [round(t, 2) for t in total],
            "python_and_imports_s": round(
                statistics.median(r["imports_done"] - r["spawned"] for r in runs), 2
            ),
            "agent_start_s": round(
                statistics.median(r["agent_started"] - r["source_opened"] for r in runs), 2
            ),
            "start_to_first_frame_s": round(
                statistics.median(r["first_frame"] - r["agent_started"] for r in runs), 3
            ),
            "peak_rss_mb": max(r["peak_rss_mb"] - r["replay_buffer_mb"] for r in runs),
        }
    out["startup"] = startup
    idle: dict[str, Any] = {}
    seconds = str(args.seconds)
    keys = ("cpu_percent", "detector_runs_per_s", "frames_per_s")

    def figures(run: dict[str, Any]) -> dict[str, Any]:
        return {
            **{k: run[k] for k in keys},
            "peak_rss_mb": round(run["peak_rss_mb"] - run["replay_buffer_mb"], 1),
        }

    for name, model, scene in (("room_yolox", "yolox", "room"), ("parked_synth", "synth", "parked")):
        on = spawn("--model", model, "--scene", scene, "--seconds", seconds)
        off = spawn("--model", model, "--scene", scene, "--seconds", seconds, "--gate-off")
        idle[name] = {
            "gate_on": figures(on),
            "gate_off": figures(off),
            "cpu_ratio_on_to_off": round(on["cpu_percent"] / max(1e-9, off["cpu_percent"]), 3),
        }
    out["idle"] = idle
    out["clip_realtime"] = figures(spawn("--model", "yolox", "--scene", "clip", "--seconds", "120"))
    emit(out)


if __name__ == "__main__":
    main()
