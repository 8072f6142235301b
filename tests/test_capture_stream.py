"""Network streams through the real OpenCV/FFmpeg path: a camera that never answers or stalls mid-stream
must not hang the capture thread, and the stage must reconnect when the camera comes back.

The camera is a local HTTP server sending MPEG-TS (the same FFmpeg demuxing and the same timeout
options as RTSP; Debian has no RTSP server to start here).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from agent.capture import CaptureStage, SourceError
from agent.capture.opencv import LiveCaptureSource
from tests.conftest import CLIP, shared


class FakeCamera:
    """Accepts HTTP connections and plays a script per connection: 'silent' (never answers),
    'stall' (a quarter of the stream, then nothing, connection kept open) or 'full'."""

    def __init__(self, stream: bytes, script: list[str]) -> None:
        self.stream = stream
        self.script = script
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="fake-camera", daemon=True)

    @property
    def url(self) -> str:
        return f"http://cam:secret@127.0.0.1:{self._sock.getsockname()[1]}/live.ts"

    def __enter__(self) -> FakeCamera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
        for conn in self._open:
            conn.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._open.append(conn)
            mode = self.script[min(self.connections, len(self.script) - 1)]
            self.connections += 1
            try:
                conn.recv(4096)
                if mode == "silent":
                    continue
                body = self.stream if mode == "full" else self.stream[: len(self.stream) // 4]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + body)
                if mode == "full":
                    conn.close()
            except OSError:
                continue


@pytest.fixture(scope="module")
def transport_stream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    clip = shared(CLIP)
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (./scripts/setup installs it)")
    out = tmp_path_factory.mktemp("ts") / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-t", "20", "-c", "copy", "-f", "mpegts", str(out)],
        check=True,
        timeout=120,
    )
    return Path(out).read_bytes()


def test_a_camera_that_never_answers_fails_the_open_instead_of_hanging(transport_stream):
    with FakeCamera(transport_stream, ["silent"]) as camera:
        source = LiveCaptureSource(camera.url, read_timeout_s=0.5, open_timeout_s=0.5)
        outcome: list[BaseException | None] = []

        def open_it() -> None:
            try:
                source.open()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        opener = threading.Thread(target=open_it)
        opener.start()
        opener.join(30)  # without the open timeout FFmpeg waits for ever
        assert not opener.is_alive(), "open() hung on a silent camera"
        assert isinstance(outcome[0], SourceError)
        assert "secret" not in str(outcome[0]) and "***@127.0.0.1" in str(outcome[0])


def test_a_stalled_stream_is_reported_lost_and_recovered_when_the_camera_returns(transport_stream):
    states: list[tuple[str, str]] = []
    recovered = threading.Event()

    def on_state(state: str, reason: str) -> None:
        states.append((state, reason))
        if state == "recovered":
            recovered.set()

    with FakeCamera(transport_stream, ["stall", "full"]) as camera:
        source = LiveCaptureSource(camera.url, read_timeout_s=0.5, open_timeout_s=0.5)
        stage = CaptureStage(source, reconnect_initial_s=0.05, reconnect_max_s=0.2, on_state=on_state).start()
        try:
            assert recovered.wait(30), f"no recovery; states so far: {states}"
        finally:
            stage.stop()
    assert [s for s, _ in states[:2]] == ["lost", "recovered"]
    assert "secret" not in states[0][1]
    assert camera.connections >= 2 and stage.reconnects >= 1
