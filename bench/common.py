"""Shared helpers for the benchmarks: data paths, replay sources, interleaved runs, robust statistics.

Benchmarks are not tests: pytest never collects this folder (testpaths = ["tests"]). Every script
prints one JSON object; `bench/run_all.py` runs them and renders the README table. Machines that run
them (CI runners, shared VMs, a Pi in a box) are noisy, so every comparison is a ratio of variants
run side by side, interleaved round by round, reported as a median with its spread.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("VIGIL_SHARED", ROOT.parent / "shared")).resolve() / "data"
CLIP = SHARED / "video" / "one-by-one-person-detection.mp4"
YOLOX = SHARED / "models" / "yolox_nano" / "yolox_nano.onnx"
SYNTH_MODEL = ROOT / "models" / "vigil-synth" / "vigil-synth.onnx"

from agent.capture.base import Frame, FrameSource  # noqa: E402


def need(*paths: Path) -> None:
    """Exit with a clear message when shared data is missing (benchmarks never download)."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"missing benchmark data: {', '.join(missing)} (../shared/data; see its SOURCE.md files)")


def decode(video: Path, count: int | None = None, start: int = 0) -> list[np.ndarray]:
    """Decode frames [start, start + count) of a video into memory (BGR, as OpenCV delivers them)."""
    cap = cv2.VideoCapture(str(video))
    if start:
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames: list[np.ndarray] = []
    while count is None or len(frames) < count:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


class MemorySource(FrameSource):
    """Replays decoded frames as a recorded source: media time, no decoding cost, every frame kept."""

    name = "memory"
    live = False

    def __init__(self, images: Sequence[np.ndarray], fps: float = 10.0) -> None:
        self.images = images
        self._fps = fps
        self._index = 0

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        self._index = 0

    def read(self) -> Frame | None:
        if self._index >= len(self.images):
            return None
        frame = Frame(self.images[self._index], self._index, self._index / self._fps, time.monotonic())
        self._index += 1
        return frame

    def close(self) -> None:
        pass


class AsCamera(FrameSource):
    """Plays a recorded source like a live camera: one frame every 1/fps in real time, stamped when
    released (`t` = `mono` = that instant, exactly as a V4L2 or picamera2 source stamps a frame), so
    "captured" in latency figures is the moment a camera would have handed the frame over. The agent
    treats it as live (newest frame wins, drops counted). `loop` replays a finite source forever.
    """

    name = "camera-replay"
    live = True

    def __init__(self, inner: FrameSource, *, fps: float | None = None, loop: bool = False) -> None:
        self.inner = inner
        self._fps = fps
        self.loop = loop
        self._next = 0.0
        self._index = 0

    @property
    def fps(self) -> float:
        return self._fps or self.inner.fps

    def open(self) -> None:
        self.inner.open()
        self._next = time.monotonic()
        self._index = 0

    def read(self) -> Frame | None:
        frame = self.inner.read()
        if frame is None and self.loop:
            self.inner.close()
            self.inner.open()
            frame = self.inner.read()
        if frame is None:
            return None
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the camera's frame clock, not synchronisation between threads
        self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 1.0)
        now = time.monotonic()
        frame = Frame(frame.image, self._index, now, now, main=frame.main, truth=frame.truth)
        self._index += 1
        return frame

    def close(self) -> None:
        self.inner.close()


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round, rotating the order, so load drift hits all of them alike."""
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(variants[name]())
    return results


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Median, best and worst of repeated measurements, and the spread relative to the median."""
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0}
    med = statistics.median(values)
    return {
        "median": round(med, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "spread": round((max(values) - min(values)) / med, 3) if med else None,
        "n": len(values),
    }


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios (same round: same machine state), summarised, and the ratio of the best
    rounds of each (the least disturbed run of each variant: noise only ever slows things down)."""
    out = summary([a / b for a, b in zip(numerator, denominator, strict=True) if b], 3)
    if numerator and denominator and max(denominator):
        out["best"] = round(max(numerator) / max(denominator), 3)
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(np.ceil(q / 100.0 * len(ordered))) - 1))
    return float(ordered[rank])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` figure (VmRSS, VmHWM…) from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (ratios travel between machines; absolute figures do not)."""
    import onnxruntime

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def write_trace(path: Path, trace: dict[str, Any]) -> None:
    """An event trace as JSON with one record per line (small diffs when it is re-recorded)."""
    head = {k: v for k, v in trace.items() if k != "records"}
    lines = [json.dumps(r, separators=(",", ":")) for r in trace["records"]]
    body = json.dumps(head, indent=1)[:-2] + ',\n "records": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    json.loads(body)  # it must stay valid JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def read_trace(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    print(json.dumps(result, indent=2))
