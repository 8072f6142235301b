#!/usr/bin/env python3
"""Pipeline vs the limit: frames/s of the full agent pipeline against a bare onnxruntime loop.

Both read the same frames from the same file with the same model (YOLOX-Nano from ../shared) at 1
and 2 onnxruntime threads, side by side in one run:

- bare: cv2.VideoCapture.read → letterbox → session.run, one thread, nothing else;
- vigil: the agent's CaptureStage (file source, every frame) → motion gate off → detector (decode,
  NMS, class filter) → tracker → events → spool, exactly as `agent --no-motion-gate` runs it.

    .venv/bin/python bench/pipeline.py [--frames 400] [--repeat 3]

Prints one JSON object; the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from agent.capture import CaptureStage, VideoFileSource  # noqa: E402
from agent.clock import Clock  # noqa: E402
from agent.config.schema import Config  # noqa: E402
from agent.detect import load_detector  # noqa: E402
from agent.detect.detector import open_session  # noqa: E402
from agent.detect.preprocess import letterbox  # noqa: E402
from agent.events import EventEmitter, EventFactory  # noqa: E402
from agent.motion import MotionGate  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from agent.track import Tracker  # noqa: E402
from agent.uplink.spool import Spool  # noqa: E402


def bare(video: Path, model: Path, frames: int, threads: int) -> float:
    session = open_session(model, threads)
    name = session.get_inputs()[0].name
    cap = cv2.VideoCapture(str(video))
    started = time.perf_counter()
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        canvas, _ = letterbox(frame, 416, 416, centre=False)
        tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        session.run(None, {name: tensor})
    elapsed = time.perf_counter() - started
    cap.release()
    return frames / elapsed


def vigil(video: Path, model: Path, frames: int, threads: int, folder: Path) -> tuple[float, dict]:
    cfg = Config()
    cfg.motion.enabled = False
    detector = load_detector(
        model, threads=threads, classes=cfg.detect.classes, score_threshold=cfg.detect.score_threshold
    )
    spool = Spool(folder / f"bench-{threads}-{time.monotonic_ns()}.db").start()
    factory = EventFactory("bench", Clock(), detector.info)
    pipeline = Pipeline(
        detector=detector,
        gate=MotionGate(cfg.motion),
        tracker=Tracker(),
        factory=factory,
        emitter=EventEmitter(spool),
        events_cfg=cfg.events,
    )
    capture = CaptureStage(VideoFileSource(video), realtime=False).start()
    started = time.perf_counter()
    done = pipeline.run(capture, threading.Event(), max_frames=frames)
    elapsed = time.perf_counter() - started
    capture.stop()
    spool.stop()
    return done / elapsed, {"events": pipeline.stats.events, "detector_runs": pipeline.gate.stats.detected}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--video", type=Path, default=SHARED / "video" / "one-by-one-person-detection.mp4")
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "yolox_nano" / "yolox_nano.onnx")
    args = parser.parse_args()
    if not args.video.exists() or not args.model.exists():
        sys.exit(f"needs {args.video} and {args.model} (../shared/data)")
    out: dict = {"frames": args.frames, "model": args.model.name, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            rows = {"bare_fps": [], "vigil_fps": []}
            info = {}
            for _ in range(args.repeat):  # interleave so drift in machine load hits both alike
                rows["bare_fps"].append(bare(args.video, args.model, args.frames, threads))
                fps, info = vigil(args.video, args.model, args.frames, threads, Path(tmp))
                rows["vigil_fps"].append(fps)
            best_bare, best_vigil = max(rows["bare_fps"]), max(rows["vigil_fps"])
            out["results"][f"threads_{threads}"] = {
                "bare_fps": round(best_bare, 2),
                "vigil_fps": round(best_vigil, 2),
                "ratio": round(best_vigil / best_bare, 3),
                "runs": {k: [round(v, 2) for v in vs] for k, vs in rows.items()},
                **info,
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
