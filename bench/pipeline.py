#!/usr/bin/env python3
"""Pipeline vs the limit: frames/s of the full agent pipeline against a bare onnxruntime loop.

Same frames, same model (YOLOX-Nano from ../shared), at 1 and 2 onnxruntime threads, all variants
interleaved round by round in one run:

- ``bare``: the loop from the model's SOURCE.md: letterbox (cv2.resize into a 114-filled canvas) →
  HWC→CHW float32 → ``session.run``, with onnxruntime's default session options (only the thread
  count set). **Decoding is excluded**: it runs on frames already in memory, because the limit is
  what the model costs; a camera node's decoding happens on the capture thread (or not at all with
  picamera2's raw low-resolution stream).
- ``bare_tuned``: the same loop on the agent's tuned session (`agent.detect.detector.open_session`):
  the gain from session tuning alone.
- ``vigil``: the full agent pipeline on the same in-memory frames: CaptureStage (recorded source,
  every frame) → motion gate off → detector (preprocess, decode, class filter, NMS) → tracker →
  events → spool. Its ratio to ``bare_tuned`` is the pipeline's overhead; to ``bare`` the total.
- ``vigil_spin``: the agent with ``detect.spin = true`` (2+ threads): like for like with ``bare``,
  whose default session lets worker threads spin; ``cpu_ms_per_frame`` shows what spinning costs;
- ``bare_file`` / ``vigil_file``: the same two with decoding from the file included (bare decodes
  serially in its loop; the agent decodes on its capture thread, as it does in production).

    .venv/bin/python bench/pipeline.py [--frames 150] [--rounds 5] [--threads 1 2]

Prints one JSON object: medians, spreads and per-round ratios (the figure to compare across machines).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture import CaptureStage, Frame, FrameSource, VideoFileSource
from agent.capture.opencv import shrink
from agent.clock import Clock
from agent.config.schema import Config
from agent.detect import Detection, Detector, OnnxDetector, load_detector
from agent.detect.decoders import nms
from agent.detect.detector import open_session
from agent.detect.preprocess import letterbox
from agent.events import EventEmitter, EventFactory
from agent.motion import MotionGate, shrink_grey
from agent.pipeline import Pipeline
from agent.track import Tracker
from agent.uplink.spool import Spool
from bench.common import (
    CLIP,
    YOLOX,
    MemorySource,
    decode,
    emit,
    interleave,
    machine,
    need,
    percentile,
    ratios,
    summary,
)


def default_session(model: Path, threads: int):
    """onnxruntime as a user would open it: defaults, CPU provider, only the thread count set."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def reference_blob(image: np.ndarray, size: int = 416) -> np.ndarray:
    """YOLOX preprocessing exactly as the model's SOURCE.md describes it (top-left letterbox, 114)."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    resized = cv2.resize(image, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


def bare_memory(session, frames: list[np.ndarray]) -> float:
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for image in frames:
        session.run(None, {name: reference_blob(image)})
    return len(frames) / (time.perf_counter() - started)


class SeekingFileSource(VideoFileSource):
    """The agent's file source, starting at frame `start` (so both pairs see the same frames)."""

    def __init__(self, path: Path, start: int) -> None:
        super().__init__(path)
        self.start = start

    def open(self) -> None:
        super().open()
        if self.start and self._cap is not None:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, self.start)


def bare_file(session, video: Path, count: int, start: int) -> float:
    name = session.get_inputs()[0].name
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    done = 0
    started = time.perf_counter()
    while done < count:
        ok, image = cap.read()
        if not ok:
            break
        session.run(None, {name: reference_blob(image)})
        done += 1
    elapsed = time.perf_counter() - started
    cap.release()
    return done / elapsed


class Agentlike:
    """The agent's analysis pipeline, built as `agent.app.Agent.start` builds it (motion gate off)."""

    def __init__(self, detector: OnnxDetector, folder: Path) -> None:
        self.detector = detector
        self.folder = folder
        self.runs = 0
        self.events = 0
        self.inference_ms: list[float] = []

    def fps(self, source: FrameSource, count: int) -> float:
        cfg = Config.model_validate({"motion": {"enabled": False}})
        self.runs += 1
        spool = Spool(self.folder / f"bench-{self.runs}-{time.monotonic_ns()}").start()
        spool.add_listener(lambda records: spool.ack(r.rowid for r in records))  # as with no broker
        pipeline = Pipeline(
            detector=self.detector,
            gate=MotionGate(cfg.motion),
            tracker=Tracker.from_config(cfg.track),
            factory=EventFactory("bench", Clock(), self.detector.info),
            emitter=EventEmitter(spool),
            events_cfg=cfg.events,
        )
        capture = CaptureStage(source, realtime=False).start()
        self.detector.inference_ms.clear()
        started = time.perf_counter()
        done = pipeline.run(capture, threading.Event(), max_frames=count)
        elapsed = time.perf_counter() - started
        capture.stop()
        spool.stop()
        self.events += pipeline.stats.events
        self.inference_ms.extend(self.detector.inference_ms)
        return done / elapsed


def canvas_letterbox(tensor: np.ndarray, canvas: np.ndarray, image: np.ndarray) -> None:
    """The agent's preprocessing before this benchmark pointed at it: fill a whole canvas, resize into
    it, then one strided transposing copy of all of it into the tensor (kept to show the difference)."""
    letterbox(image, 416, 416, centre=False, out=canvas)
    np.copyto(tensor[0], canvas.transpose(2, 0, 1), casting="unsafe")


class Replay(Detector):
    """Hands back recorded detections: the pipeline's own cost, without inference."""

    def __init__(self, inner: OnnxDetector, recorded: list[list[Detection]]) -> None:
        self.card, self.sha256, self.path = inner.card, inner.sha256, inner.path
        self.recorded = recorded
        self.index = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        found = self.recorded[self.index % len(self.recorded)]
        self.index += 1
        return found


def per_call_ms(fn: Callable[[Any], Any], items: list[Any], repeat: int = 3) -> dict[str, Any]:
    """Median (and best) milliseconds per call over every item, `repeat` times."""
    times = []
    for _ in range(repeat):
        for item in items:
            started = time.perf_counter()
            fn(item)
            times.append((time.perf_counter() - started) * 1000.0)
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3)}


def components(args: argparse.Namespace, frames: list[np.ndarray], folder: Path) -> dict[str, Any]:
    """Where a frame's time goes, stage by stage (one thread; each step timed call by call)."""
    cfg = Config()
    detector = load_detector(args.model, threads=1, classes=cfg.detect.classes)
    cap = cv2.VideoCapture(str(args.video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, args.start)
    out: dict[str, Any] = {"decode_video": per_call_ms(lambda _: cap.read(), list(range(len(frames))), 1)}
    cap.release()
    gate = MotionGate(cfg.motion)
    out["motion_gate"] = per_call_ms(gate.measure, frames)
    # the gate's small grey copy, as it was made before (area-averaging the colour frame) and now
    out["motion_shrink_before"] = per_call_ms(
        lambda image: cv2.cvtColor(
            cv2.resize(image, (160, 90), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
        ),
        frames,
    )
    out["motion_shrink_vigil"] = per_call_ms(lambda image: shrink_grey(image, 160, 90), frames)
    # a 1080p camera's analysis copy (1280 wide), before (one area step) and now
    big = [cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR) for image in frames[:20]]
    out["downscale_1080p_before"] = per_call_ms(
        lambda image: cv2.resize(image, (1280, 720), interpolation=cv2.INTER_AREA), big
    )
    out["downscale_1080p_vigil"] = per_call_ms(lambda image: shrink(image, 1280, 720), big)
    tensor, canvas = np.empty((1, 3, 416, 416), np.float32), np.empty((416, 416, 3), np.uint8)
    out["preprocess_reference"] = per_call_ms(reference_blob, frames)
    out["preprocess_before"] = per_call_ms(lambda image: canvas_letterbox(tensor, canvas, image), frames)
    out["preprocess_vigil"] = per_call_ms(detector.prepare, frames)
    outputs = []

    def infer(image: np.ndarray) -> None:
        detector.prepare(image)
        started = time.perf_counter()
        outputs.append(detector.run())
        infer_ms.append((time.perf_counter() - started) * 1000.0)

    infer_ms: list[float] = []
    per_call_ms(infer, frames, 1)
    out["inference"] = {"median": round(statistics.median(infer_ms), 3), "min": round(min(infer_ms), 3)}
    recorded = [detector.detect(image) for image in frames]
    out["decode_nms"] = per_call_ms(
        lambda o: nms(*detector._decode(o, detector.card, detector.score_threshold)[:2], 0.45), outputs
    )
    spool = Spool(folder / f"components-{time.monotonic_ns()}").start()
    spool.add_listener(lambda records: spool.ack(r.rowid for r in records))
    cfg = cfg.model_copy(update={"motion": cfg.motion.model_copy(update={"enabled": False})})  # frozen
    replay = Replay(detector, recorded)
    pipeline = Pipeline(
        detector=replay,
        gate=MotionGate(cfg.motion),
        tracker=Tracker(),
        factory=EventFactory("bench", Clock(), replay.info),
        emitter=EventEmitter(spool),
        events_cfg=cfg.events,
    )
    index = iter(range(10**9))
    out["track_events"] = per_call_ms(
        lambda image: pipeline.process(Frame(image, (i := next(index)), i / 10.0, time.monotonic())), frames
    )
    spool.stop()
    return out


def measure(args: argparse.Namespace, threads: int, frames: list[np.ndarray], folder: Path) -> dict[str, Any]:
    cfg = Config()
    plain = default_session(args.model, threads)
    tuned = open_session(args.model, threads)

    def agent(spinning: bool) -> Agentlike:
        detector = load_detector(
            args.model,
            threads=threads,
            classes=cfg.detect.classes,
            score_threshold=cfg.detect.score_threshold,
            nms_iou=cfg.detect.nms_iou,
            min_box_area=cfg.detect.min_box_area,
            spinning=spinning,
        )
        return Agentlike(detector, folder)

    vigil, vigil_spin = agent(False), agent(True)
    warm = frames[: min(10, len(frames))]
    bare_memory(plain, warm), bare_memory(tuned, warm), vigil.fps(MemorySource(warm), len(warm))
    variants: dict[str, Callable[[], float]] = {
        "bare": lambda: bare_memory(plain, frames),
        "bare_tuned": lambda: bare_memory(tuned, frames),
        "vigil": lambda: vigil.fps(MemorySource(frames), len(frames)),
    }
    if threads > 1:  # with one thread there are no workers to spin
        vigil_spin.fps(MemorySource(warm), len(warm))
        variants["vigil_spin"] = lambda: vigil_spin.fps(MemorySource(frames), len(frames))
    if args.file:
        variants["bare_file"] = lambda: bare_file(plain, args.video, len(frames), args.start)
        variants["vigil_file"] = lambda: vigil.fps(SeekingFileSource(args.video, args.start), len(frames))
    cpu_ms: dict[str, list[float]] = {name: [] for name in variants}

    def with_cpu(name: str, run: Callable[[], float]) -> Callable[[], float]:
        def measured() -> float:
            started = time.process_time()
            fps = run()
            cpu_ms[name].append((time.process_time() - started) * 1000.0 / len(frames))
            return fps

        return measured

    runs = interleave({name: with_cpu(name, run) for name, run in variants.items()}, args.rounds)
    out: dict[str, Any] = {name: summary(values) for name, values in runs.items()}
    out["ratio_vigil_to_bare"] = ratios(runs["vigil"], runs["bare"])
    out["ratio_vigil_to_bare_tuned"] = ratios(runs["vigil"], runs["bare_tuned"])
    out["ratio_tuned_to_bare"] = ratios(runs["bare_tuned"], runs["bare"])
    if "vigil_spin" in runs:
        out["ratio_vigil_spin_to_bare"] = ratios(runs["vigil_spin"], runs["bare"])
    if args.file:
        out["ratio_vigil_file_to_bare_file"] = ratios(runs["vigil_file"], runs["bare_file"])
    # CPU time of the whole process per frame (all threads): what a node pays in heat for a frame/s
    out["cpu_ms_per_frame"] = {name: summary(values, 1)["median"] for name, values in cpu_ms.items()}
    p50 = percentile(vigil.inference_ms, 50)
    out["vigil_inference_ms_p50"] = round(p50, 2) if p50 is not None else None
    out["vigil_events"] = vigil.events
    out["runs_fps"] = {name: [round(v, 2) for v in values] for name, values in runs.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=120, help="frames per variant per round")
    parser.add_argument(
        "--start", type=int, default=60, help="first frame of the clip used (a person enters at 70)"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-file", dest="file", action="store_false", help="skip the decode-included pair")
    parser.add_argument("--video", type=Path, default=CLIP)
    parser.add_argument("--model", type=Path, default=YOLOX)
    args = parser.parse_args()
    need(args.video, args.model)
    frames = decode(args.video, args.frames, args.start)
    out: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": machine(),
        "model": args.model.name,
        "frames_per_round": len(frames),
        "rounds": args.rounds,
        "decoding": "excluded from bare/bare_tuned/vigil (frames in memory); included in *_file",
        "goal": "ratio_vigil_to_bare >= 0.95",
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            out["results"][f"threads_{threads}"] = measure(args, threads, frames, Path(tmp))
        out["components_ms"] = components(args, frames, Path(tmp))
    emit(out)


if __name__ == "__main__":
    main()
