"""Camera health: a network camera that dies and comes back (ffmpeg serving a live MJPEG stream over
HTTP), a camera that freezes (a recording whose picture stops changing), and a source that hangs."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from agent.capture.base import Frame
from agent.config.control import HealthConfig
from agent.health.camera import CameraHealth
from agent.track import Tracker
from tests.agent_harness import AgentHarness
from tests.brokers import free_port


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait for a listening socket without connecting to it: ffmpeg's `-listen 1` serves exactly one
    client, and a probe connection would be it."""
    wanted = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ffmpeg exited with {proc.returncode}")
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as fh:
                if any(wanted in line and line.split()[3] == "0A" for line in fh):
                    return
        time.sleep(0.05)  # polling a port that is coming up, as tests/brokers.wait_port does
    raise TimeoutError(f"nothing listens on port {port}")


class LiveCamera:
    """ffmpeg as a network camera: a test pattern, live, as multipart JPEG over HTTP."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("ffmpeg")
        if binary is None:
            pytest.skip("ffmpeg is not installed (./scripts/setup installs it)")
        self.binary = binary
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cam.mjpg"

    def start(self) -> LiveCamera:
        log = (self.folder / "ffmpeg.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
             "-i", "testsrc=size=320x240:rate=10", "-c:v", "mjpeg", "-q:v", "6", "-f", "mpjpeg",
             "-listen", "1", self.url],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def camera_events(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["type"], r.get("reason", "")) for r in records if r.get("type") in ("camera_lost", "camera_recovered")]


def test_a_network_camera_that_dies_is_reported_lost_then_recovered(tmp_path, event_validator):
    camera = LiveCamera(tmp_path).start()
    config = {"capture": {"source": camera.url, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5}}
    try:
        with AgentHarness(tmp_path / "state", config=config) as node:
            assert node.wait_records(lambda _rs: node.running.capture.frames_read > 5, 20)
            camera.kill()  # the stream stops: ffmpeg (the camera) is gone
            assert node.wait_records(lambda rs: camera_events(rs), 20)
            assert node.stage("health").camera.state() == "lost"
            assert node.stage("health").status()["camera"]["problems"]["lost"]
            camera.start()  # the camera is back on the same address
            assert node.wait_records(lambda rs: len(camera_events(rs)) >= 2, 30)
            assert node.stage("health").camera.state() == "ok"
    finally:
        camera.kill()
    events = [r for r in node.records if r.get("type") in ("camera_lost", "camera_recovered")]
    assert [e["type"] for e in events] == ["camera_lost", "camera_recovered"]
    assert all(e["priority"] == "critical" for e in events)
    assert events[0]["reason"].startswith("lost:") and events[1]["duration_s"] > 0
    for event in events:
        event_validator.validate(event)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_a_frozen_picture_is_reported_and_its_end_too(tmp_path):
    rng = np.random.default_rng(1)
    moving = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(20)]
    still = [moving[-1]] * 60  # 6 s of a picture that does not change at all
    video = tmp_path / "frozen.avi"
    write_video(video, moving + still + moving[:20])
    config = {"capture": {"source": str(video), "realtime": False}, "health": {"frozen_after_s": 3},
              "tamper": {"enabled": False}}
    with AgentHarness(tmp_path / "state", config=config) as node:
        assert node.wait_records(lambda rs: len(camera_events(rs)) >= 2, 30)
    kinds = camera_events(node.records)
    assert kinds[0][0] == "camera_lost" and kinds[0][1].startswith("frozen: identical frames")
    assert kinds[1][0] == "camera_recovered"


def test_a_hung_live_source_is_stalled(tmp_path):
    """A driver that blocks in read(): no exception, no frame; only the clock tells."""
    now = [100.0]
    emitted: list[dict] = []
    capture = SimpleNamespace(frames_read=10, lost=False, source=SimpleNamespace(live=True),
                              slot=SimpleNamespace(ended=False))
    emitter = SimpleNamespace(emit=lambda body, thumb=None: emitted.append(body) or True)
    factory = SimpleNamespace(base=lambda kind, frame, priority: {"type": kind, "priority": priority})
    health = CameraHealth(HealthConfig(stalled_after_s=5), capture, emitter, factory, monotonic=lambda: now[0])
    health.check()
    now[0] += 4.0
    health.check()
    assert health.ok and not emitted
    now[0] += 2.0
    health.check()
    assert health.state() == "stalled" and emitted[-1]["type"] == "camera_lost"
    assert emitted[-1]["priority"] == "critical" and "no frame for 6s" in emitted[-1]["reason"]
    capture.frames_read += 1
    health.check()
    assert health.ok and emitted[-1]["type"] == "camera_recovered" and emitted[-1]["duration_s"] == 0.0
    capture.lost = True  # reconnecting: the capture stage reports that itself, no stall on top
    now[0] += 60
    health.check()
    assert health.ok and len(emitted) == 2


def test_noise_is_not_a_frozen_picture():
    emitted: list[dict] = []
    capture = SimpleNamespace(frames_read=0, lost=False, source=SimpleNamespace(live=True),
                              slot=SimpleNamespace(ended=False))
    emitter = SimpleNamespace(emit=lambda body, thumb=None: emitted.append(body) or True)
    factory = SimpleNamespace(base=lambda kind, frame, priority: {"type": kind, "priority": priority})
    health = CameraHealth(HealthConfig(frozen_after_s=2), capture, emitter, factory)
    rng = np.random.default_rng(3)
    scene = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for index in range(100):  # 10 s of a still scene with sensor noise (±1 grey level)
        noisy = np.clip(scene.astype(np.int16) + rng.integers(-1, 2, scene.shape), 0, 255).astype(np.uint8)
        health(Frame(noisy, index, index / 10, 0.0), [], Tracker())
    assert health.ok and not emitted
