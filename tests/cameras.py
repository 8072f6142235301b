"""Network cameras for tests: FFmpeg serving a real MPEG-TS stream over HTTP, in real time, through the
same OpenCV/FFmpeg demuxing and timeout path as RTSP (Debian has no RTSP server to start here).

`StreamCamera` can be switched on late (a camera that boots after the Pi) and can be made to flap
(each viewer gets `session_s` seconds of video, then the stream ends and the camera restarts, like an
IP camera whose encoder keeps crashing). FFmpeg's `-listen 1` serves one client and exits, so a
supervisor thread starts it again for the next connection.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.brokers import free_port


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> bool:
    """Wait for a listening socket without connecting to it (`-listen 1` serves exactly one client, and
    a probe connection would be it). False when the process exited first."""
    wanted = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as fh:
                if any(wanted in line and line.split()[3] == "0A" for line in fh):
                    return True
        time.sleep(0.02)  # polling a port that is coming up, as tests/brokers.wait_port does
    raise TimeoutError(f"nothing listens on port {port}")


def ffmpeg_binary() -> str:
    binary = shutil.which("ffmpeg")
    if binary is None:
        pytest.skip("ffmpeg is not installed (./scripts/setup installs it)")
    return binary


def transport_stream(clip: Path, out: Path, seconds: float = 60.0) -> Path:
    """The clip's first `seconds` as MPEG-TS (stream copy: what an IP camera's encoder would send)."""
    subprocess.run(
        [ffmpeg_binary(), "-v", "error", "-y", "-i", str(clip), "-t", str(seconds), "-c", "copy",
         "-f", "mpegts", str(out)],
        check=True,
        timeout=120,
    )
    return out


class StreamCamera:
    """An HTTP MPEG-TS camera on a fixed port, served in real time by FFmpeg (`-re`).

    `session_s` None: each viewer gets the clip looped for ever; a number: the stream ends after that
    many seconds (the camera "flaps"), and the next connection gets a fresh stream.
    """

    def __init__(self, stream: Path, folder: Path, *, session_s: float | None = None) -> None:
        self.binary = ffmpeg_binary()
        self.stream = stream
        self.folder = folder
        self.session_s = session_s
        self.port = free_port()
        self.sessions = 0  # streams that started (a client connected and got video)
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._up = threading.Event()

    @property
    def url(self) -> str:
        return f"http://viewer:secret@127.0.0.1:{self.port}/live.ts"

    def start(self) -> StreamCamera:
        """Switch the camera on; returns once it listens."""
        self._stop.clear()
        self._up.clear()
        self._thread = threading.Thread(target=self._serve, name="stream-camera", daemon=True)
        self._thread.start()
        if not self._up.wait(20):
            raise TimeoutError("the camera did not come up")
        return self

    def stop(self) -> None:
        """Switch the camera off (connections refused from now on)."""
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _command(self) -> list[str]:
        cmd = [self.binary, "-hide_banner", "-loglevel", "error", "-re"]
        if self.session_s is None:
            cmd += ["-stream_loop", "-1"]
        cmd += ["-i", str(self.stream)]
        if self.session_s is not None:
            cmd += ["-t", f"{self.session_s:g}"]
        return [*cmd, "-c", "copy", "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{self.port}/live.ts"]

    def _serve(self) -> None:
        log = (self.folder / f"camera-{self.port}.log").open("ab")
        try:
            while True:
                with self._lock:  # never start a camera process after stop() looked for one to kill
                    if self._stop.is_set():
                        return
                    proc = subprocess.Popen(self._command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
                    self._proc = proc
                if wait_listening(self.port, proc):
                    self._up.set()
                proc.wait()
                if proc.returncode == 0:
                    self.sessions += 1
        finally:
            log.close()
