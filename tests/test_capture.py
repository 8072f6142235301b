from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agent.capture import (
    CaptureStage,
    Frame,
    FrameSlot,
    FrameSource,
    SourceError,
    SourceLost,
    SourceUnavailable,
    SyntheticSource,
    VideoFileSource,
    open_source,
)
from agent.capture.opencv import LiveCaptureSource
from agent.capture.picamera import Picamera2Source
from agent.lifecycle import deadline_in
from agent.urls import hide_userinfo
from tests.conftest import CLIP, shared


def frame(i: int) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), i, i / 10, time.monotonic())


def test_slot_newest_wins_and_counts_drops():
    slot = FrameSlot(block_when_full=False)
    stop = threading.Event()
    for i in range(5):
        slot.put(frame(i), stop)
    got = slot.get(timeout=0.1)
    assert got is not None and got.index == 4
    assert slot.dropped == 4
    assert slot.get(timeout=0.01) is None


def test_blocking_slot_loses_nothing():
    slot = FrameSlot(block_when_full=True)
    stop = threading.Event()
    seen = []

    def producer():
        for i in range(50):
            slot.put(frame(i), stop)
        slot.close()

    threading.Thread(target=producer).start()
    while not slot.ended:
        f = slot.get(timeout=1.0)
        if f is not None:
            seen.append(f.index)
    assert seen == list(range(50))
    assert slot.dropped == 0


def test_source_specs():
    assert isinstance(open_source("synthetic:7"), SyntheticSource)
    assert open_source("synthetic:7").seed == 7
    assert isinstance(open_source("file:/x/y.mp4"), VideoFileSource)
    assert isinstance(open_source("/x/y.mp4"), VideoFileSource)
    assert isinstance(open_source("webcam:2"), LiveCaptureSource)
    assert open_source("webcam:2").target == 2
    assert isinstance(open_source("rtsp://cam.local/stream"), LiveCaptureSource)
    assert isinstance(open_source("picamera2"), Picamera2Source)
    with pytest.raises(SourceError, match="unknown source"):
        open_source("camera-please")
    with pytest.raises(SourceError, match="expects a number"):
        open_source("synthetic:abc")


def test_rtsp_credentials_never_reach_logs():
    stream = LiveCaptureSource("rtsp://admin:p@ss@10.0.0.5:554/s1")
    assert stream.describe() == "rtsp://***@10.0.0.5:554/s1"
    assert hide_userinfo("rtsp://10.0.0.5/live@main") == "rtsp://10.0.0.5/live@main"  # '@' in a path stays
    assert hide_userinfo("mqtts://node:secret@broker:8883") == "mqtts://***@broker:8883"
    assert "pa/ss" not in hide_userinfo("rtsp://admin:pa/ss@10.0.0.5/s1")  # a broken URL is still hidden


def test_synthetic_scene_is_deterministic():
    a, b = SyntheticSource(seed=11), SyntheticSource(seed=11)
    a.open()
    b.open()
    for _ in range(30):
        fa, fb = a.read(), b.read()
        assert np.array_equal(fa.image, fb.image)
        assert fa.truth == fb.truth
    other = SyntheticSource(seed=12)
    other.open()
    assert not np.array_equal(other.read().image, SyntheticSource(seed=11).__enter__().read().image)


def test_real_clip_reads_every_frame_with_media_time():
    src = VideoFileSource(shared(CLIP))
    src.open()
    count, last = 0, None
    while (f := src.read()) is not None:
        count += 1
        last = f
    src.close()
    assert count == 1394
    assert src.fps == pytest.approx(10.0)
    assert last.t == pytest.approx(139.3)


def test_unreadable_video_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match=r"cannot open video|no decodable frame"):
        VideoFileSource(junk).open()
    with pytest.raises(SourceError, match="not found"):
        VideoFileSource(tmp_path / "missing.mp4").open()


def test_picamera2_absent_is_a_clear_error():
    # picamera2 exists only on a Pi; elsewhere opening must say so, not crash
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="python3-picamera2"):
            Picamera2Source().open()
    else:  # pragma: no cover - on a Pi the hw_tests cover the camera
        pytest.skip("picamera2 is installed; see hw_tests/test_camera.py")


class FlakyLive(FrameSource):
    """A live source that dies after a few frames and comes back on reopen, like an RTSP camera."""

    name = "flaky"
    live = True
    reconnectable = True

    def __init__(self, fail_after: int):
        self.fail_after = fail_after
        self.opens = 0
        self._count = 0

    @property
    def fps(self) -> float:
        return 50.0

    def open(self) -> None:
        self.opens += 1
        self._count = 0

    def read(self) -> Frame | None:
        self._count += 1
        if self.opens == 1 and self._count > self.fail_after:
            raise SourceLost("stream dropped")
        time.sleep(0.01)  # a camera delivers at its own pace
        return frame(self._count)

    def close(self) -> None:
        pass


def test_capture_stage_reconnects_a_lost_live_stream():
    source = FlakyLive(fail_after=3)
    states = []
    got_recovered = threading.Event()

    def on_state(state, reason):
        states.append(state)
        if state == "recovered":
            got_recovered.set()

    stage = CaptureStage(source, reconnect_initial_s=0.05, reconnect_max_s=0.1, on_state=on_state).start()
    try:
        assert got_recovered.wait(5.0)
    finally:
        stage.stop()
    assert states[:2] == ["lost", "recovered"]
    assert source.opens >= 2 and stage.reconnects >= 1


class BlockedLive(FrameSource):
    """A camera whose read hangs until released (a wedged V4L2 driver, a dead RTSP socket)."""

    name = "blocked"
    live = True
    reconnectable = True

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.release = threading.Event()
        self.closed = threading.Event()
        self.read_in_progress_at_close = False

    @property
    def fps(self) -> float:
        return 10.0

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        self.reading.set()
        self.release.wait()
        self.reading.clear()
        return None

    def close(self) -> None:
        self.read_in_progress_at_close = self.reading.is_set()
        self.closed.set()


def test_stop_never_closes_a_source_under_a_read_in_progress():
    source = BlockedLive()
    stage = CaptureStage(source).start()
    assert source.reading.wait(5.0)
    stage.stop(deadline_in(0.1))  # gives up waiting for the wedged read
    assert not source.closed.is_set()
    source.release.set()  # the read returns: the capture thread closes the source itself
    assert source.closed.wait(5.0)
    assert source.read_in_progress_at_close is False


class LateCamera(FrameSource):
    """A live camera that is not there until `arrive` is set (an IP camera booting after the Pi)."""

    name = "late"
    live = True
    reconnectable = True

    def __init__(self, *, fatal: bool = False) -> None:
        self.arrive = threading.Event()
        self.fatal = fatal
        self.attempts: list[float] = []
        self.tried = threading.Condition()
        self._count = 0

    @property
    def fps(self) -> float:
        return 50.0

    def open(self) -> None:
        with self.tried:
            self.attempts.append(time.monotonic())
            self.tried.notify_all()
        if self.fatal:
            raise SourceError("this machine cannot have that camera")
        if not self.arrive.is_set():
            raise SourceUnavailable("cannot open the late camera")

    def read(self) -> Frame | None:
        self._count += 1
        time.sleep(0.01)  # a camera delivers at its own pace
        return frame(self._count)

    def close(self) -> None:
        pass

    def wait_attempts(self, n: int, timeout: float) -> bool:
        with self.tried:
            return self.tried.wait_for(lambda: len(self.attempts) >= n, timeout)


def test_a_live_camera_absent_at_start_is_waited_for_with_capped_backoff():
    camera = LateCamera()
    states: list[tuple[str, str]] = []
    recovered = threading.Event()

    def on_state(state: str, reason: str) -> None:
        states.append((state, reason))
        if state == "recovered":
            recovered.set()

    stage = CaptureStage(camera, reconnect_initial_s=0.02, reconnect_max_s=0.16, on_state=on_state,
                         first_open_wait_s=5.0)
    stage.start()  # does not raise: the rest of the node starts
    try:
        snap = stage.snapshot()
        assert snap.state == "connecting" and snap.reason == "cannot open the late camera"
        assert stage.lost and not stage.slot.ended and stage.alive()
        assert "waiting for the camera (cannot open the late camera)" in stage.status_line()
        assert states == [("lost", "cannot open the late camera")]  # reported once, not per attempt
        # uncapped, ten attempts would take 0.02 × (2^10 - 1) ≈ 20 s; capped at 0.16 s about 1 s
        assert camera.wait_attempts(10, 10.0), camera.attempts
        gaps = [b - a for a, b in zip(camera.attempts, camera.attempts[1:], strict=False)]
        expected = [min(0.02 * 2**i, 0.16) for i in range(len(gaps))]
        assert all(gap >= want * 0.9 for gap, want in zip(gaps, expected, strict=True)), gaps
        assert stage.snapshot().attempts >= 9 and stage.snapshot().retry_at is not None
        camera.arrive.set()
        assert recovered.wait(5.0)
        got = stage.slot.get(timeout=5.0)
        assert got is not None
    finally:
        stage.stop()
    assert [s for s, _ in states] == ["lost", "recovered"]
    snap = stage.snapshot()
    assert snap.state == "streaming" and snap.attempts == 0 and snap.down_s > 0 and snap.drops == 0
    assert stage.status_line() == "analysing late"


def test_a_live_source_that_cannot_exist_here_still_fails_at_start():
    """picamera2 not installed is no camera that may boot later: start() says so, no retry loop."""
    camera = LateCamera(fatal=True)
    stage = CaptureStage(camera, reconnect_initial_s=0.01)
    with pytest.raises(SourceError, match="cannot have that camera"):
        stage.start()
    assert len(camera.attempts) == 1 and stage.slot.ended


def test_a_missing_video_file_still_fails_at_start(tmp_path):
    stage = CaptureStage(VideoFileSource(tmp_path / "typo.mp4"))
    with pytest.raises(SourceError, match="video file not found"):
        stage.start()


def test_an_absent_webcam_says_why(tmp_path):
    source = LiveCaptureSource(str(tmp_path / "video9"))
    with pytest.raises(SourceUnavailable, match=r"video9 does not exist\)"):
        source.open()


class DyingThread(FrameSource):
    """A source whose read ends the capture thread without ending the stream (SystemExit in a library)."""

    name = "dying"
    live = True
    reconnectable = True

    @property
    def fps(self) -> float:
        return 10.0

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        raise SystemExit("the library gave up")

    def close(self) -> None:
        pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_watchdog_hears_the_loop_while_the_camera_is_away_but_not_when_capture_died():
    from agent.pipeline import Pipeline

    pipeline = Pipeline.__new__(Pipeline)  # the loop only: no frame reaches process()
    pings: list[str] = []
    stop = threading.Event()

    def heartbeat() -> None:
        pings.append("ping")
        if len(pings) >= 3:
            stop.set()

    away = CaptureStage(LateCamera(), reconnect_initial_s=0.05, first_open_wait_s=0.1).start()
    try:
        runner = threading.Thread(target=Pipeline.run, args=(pipeline, away, stop), kwargs={"heartbeat": heartbeat})
        runner.start()
        runner.join(10)  # the loop turns every 0.2 s without frames; the third ping stops it
        assert not runner.is_alive()
    finally:
        away.stop()
    assert len(pings) == 3  # no camera, but the agent is alive: systemd keeps hearing it

    pings.clear()
    dead = CaptureStage(DyingThread(), first_open_wait_s=1.0).start()
    assert dead._loop.join(deadline_in(5))  # it dies on its first read
    try:
        with pytest.raises(SourceError, match="capture thread stopped unexpectedly"):
            Pipeline.run(pipeline, dead, threading.Event(), heartbeat=heartbeat)
        assert not dead.alive()
    finally:
        dead.stop()
    assert pings == []  # a dead capture thread is a fault a restart cures: no ping, the agent exits
