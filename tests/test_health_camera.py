"""Camera health: a network camera that dies and comes back (ffmpeg serving a live MJPEG stream over
HTTP), a camera that freezes (a recording whose picture stops changing), a source that hangs, and the
debouncing that keeps a flapping camera from becoming an event storm (unit tests on a fake clock; the
real-stream proofs are in test_camera_outage.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from agent.capture.base import Frame
from agent.capture.stage import CONNECTING, RECONNECTING, STREAMING, CaptureSnapshot
from agent.config.control import HealthConfig
from agent.health.camera import CameraHealth
from agent.track import Tracker
from tests.agent_harness import AgentHarness
from tests.brokers import free_port
from tests.cameras import wait_listening


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
    config = {"capture": {"source": camera.url, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5},
              "health": {"lost_after_s": 2}}
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


class FakeCapture:
    """The capture stage as camera health sees it (`snapshot()`), moved by hand on a fake clock."""

    def __init__(self, clock: list[float], state: str = STREAMING) -> None:
        self.clock = clock
        self.state, self.reason, self.since = state, None, clock[0]
        self.last_frame: float | None = clock[0] if state == STREAMING else None
        self.drops, self.down = 0, 0.0

    def snapshot(self) -> CaptureSnapshot:
        return CaptureSnapshot(self.state, self.reason, self.since, self.last_frame, 0, self.drops, 0, 0, None,
                               self.down)

    def frame(self) -> None:
        now = self.clock[0]
        if self.state != STREAMING:
            if self.reason is not None:
                self.down += now - self.since
            self.state, self.reason, self.since = STREAMING, None, now
        self.last_frame = now

    def drop(self, reason: str = "stream ended") -> None:
        self.state, self.reason, self.since = RECONNECTING, reason, self.clock[0]
        self.drops += 1


class Node:
    """CameraHealth with a fake capture, a fake clock and a list for the events."""

    def __init__(self, state: str = STREAMING, **cfg: float) -> None:
        self.clock = [1000.0]
        self.capture = FakeCapture(self.clock, state)
        self.events: list[dict] = []
        emitter = SimpleNamespace(emit=lambda body, thumb=None: self.events.append(body) or True)
        factory = SimpleNamespace(base=lambda kind, frame, priority: {"type": kind, "priority": priority})
        self.health = CameraHealth(HealthConfig(**cfg), self.capture, emitter, factory,
                                   monotonic=lambda: self.clock[0])

    def run(self, seconds: float, *, streaming: bool = True) -> None:
        """Let time pass in one-second ticks (the health thread's), frames arriving if streaming."""
        for _ in range(int(seconds)):
            self.clock[0] += 1.0
            if streaming:
                self.capture.frame()
            self.health.check()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


def test_a_hung_live_source_is_stalled():
    """A driver that blocks in read(): no exception, no frame; only the clock tells."""
    node = Node(stalled_after_s=5)
    node.health.check()
    node.run(4, streaming=False)
    assert node.health.state() == "ok" and not node.events
    node.run(1, streaming=False)
    assert node.health.state() == "stalled" and node.types() == ["camera_lost"]
    assert node.events[-1]["priority"] == "critical" and node.events[-1]["reason"] == "stalled: no frame for 5s"
    node.run(1)
    assert node.health.ok and node.types() == ["camera_lost", "camera_recovered"]
    assert node.events[-1]["duration_s"] == 6.0  # from the last frame, not from when it was noticed
    node.capture.drop()  # reconnecting: the capture stage says so itself, no stall on top
    node.run(3, streaming=False)
    assert node.health.state() == "reconnecting" and len(node.events) == 2


def test_noise_is_not_a_frozen_picture():
    node = Node(frozen_after_s=2)
    rng = np.random.default_rng(3)
    scene = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for index in range(100):  # 10 s of a still scene with sensor noise (±1 grey level)
        noisy = np.clip(scene.astype(np.int16) + rng.integers(-1, 2, scene.shape), 0, 255).astype(np.uint8)
        node.health(Frame(noisy, index, index / 10, 0.0), [], Tracker())
    assert node.health.ok and not node.events


def test_a_camera_absent_at_start_is_lost_once_after_the_debounce_and_recovered_when_it_streams():
    node = Node(state=CONNECTING, lost_after_s=10)
    node.capture.reason = "cannot open http://127.0.0.1:9/live.ts"
    node.run(9, streaming=False)
    assert node.health.state() == "connecting" and node.health.reported_state() == "connecting"
    assert not node.events
    node.run(50, streaming=False)  # a minute of retries: one event, not one per attempt
    assert node.types() == ["camera_lost"]
    assert node.events[0]["reason"] == "lost: cannot open http://127.0.0.1:9/live.ts (not opened since start)"
    assert node.health.state() == "lost" and node.health.reported_state() == "lost"
    node.run(1)
    assert node.types() == ["camera_lost", "camera_recovered"]
    assert node.events[1]["duration_s"] == 60.0 and node.health.reported_state() == "ok"


def test_a_healthy_start_raises_nothing():
    node = Node(state=CONNECTING)
    node.run(1, streaming=False)
    node.run(30)
    assert node.health.state() == "ok" and node.health.reported_state() == "ok" and not node.events


def test_short_drops_raise_nothing_until_they_repeat_then_one_unstable_and_one_stable():
    node = Node(lost_after_s=10, unstable_drops=3, unstable_window_s=300, stable_after_s=60)
    for _ in range(2):  # two drops of 3 s: debounced, nothing to report yet
        node.capture.drop()
        node.run(3, streaming=False)
        node.run(20)
    assert not node.events and node.health.status()["drops_recent"] == 2
    for _ in range(30):  # then it flaps: 2 s away, 2 s back, 30 times (~2 minutes)
        node.capture.drop()
        node.run(2, streaming=False)
        node.run(2)
    assert node.types() == ["camera_unstable"]
    unstable = node.events[0]
    assert unstable["priority"] == "critical" and unstable["flaps"]["drops"] == 3
    # the fake capture's frames come on the next tick: each early drop kept the camera away 4 s
    assert unstable["flaps"]["window_s"] == 46.0 and unstable["flaps"]["down_s"] == 8.0
    assert unstable["reason"] == "the stream dropped 3 times in 46s"
    assert node.health.reported_state() == "unstable"
    node.run(58)
    assert node.types() == ["camera_unstable"]  # it has held for 59 s: not yet stable
    node.run(1)
    assert node.types() == ["camera_unstable", "camera_stable"]
    stable = node.events[1]
    assert stable["flaps"] == {"drops": 32, "down_s": 98.0}  # 2 × 4 s + 30 × 3 s away
    assert stable["duration_s"] == 224.0  # from the first drop of the burst to 60 s after the last
    assert node.health.state() == "ok" and node.health.reported_state() == "ok"


def test_a_camera_that_dies_during_an_unstable_episode_is_lost_and_recovers_only_when_stable():
    node = Node(lost_after_s=10, unstable_drops=3, unstable_window_s=300, stable_after_s=60)
    for _ in range(3):
        node.capture.drop()
        node.run(2, streaming=False)
        node.run(2)
    node.capture.drop()
    node.run(30, streaming=False)  # now it is away for good
    assert node.types() == ["camera_unstable", "camera_lost"]
    for _ in range(20):  # back, but flapping: no camera_recovered (it would be followed by another loss)
        node.run(3)
        node.capture.drop()
        node.run(12, streaming=False)  # even outages past lost_after_s: camera_lost is still open
    node.run(60)
    assert node.types() == ["camera_unstable", "camera_lost"]
    assert node.health.state() == "unstable" and node.health.reported_state() == "unstable"
    node.run(1)
    assert node.types() == ["camera_unstable", "camera_lost", "camera_recovered", "camera_stable"]
    assert node.events[3]["flaps"]["drops"] == 24


def test_one_long_outage_is_lost_and_recovered_and_not_unstable():
    node = Node(lost_after_s=10, unstable_drops=3)
    node.capture.drop("camera rebooting")
    node.run(45, streaming=False)
    node.run(1)
    assert node.types() == ["camera_lost", "camera_recovered"]
    assert node.events[0]["reason"] == "lost: camera rebooting (no frame for 10s)"
    assert node.events[1]["duration_s"] == 46.0
