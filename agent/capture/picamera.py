"""Raspberry Pi camera through picamera2: a low-resolution stream for analysis, the main stream for crops.

picamera2 and libcamera exist only on a Pi (apt `python3-picamera2`), so they are imported when the
source opens, never at import time. Decoding no video at all is what makes a Pi 4 keep up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import cv2

from agent.capture.base import Frame, FrameSource, SourceError, SourceLost, SourceUnavailable

log = logging.getLogger(__name__)


class Picamera2Source(FrameSource):
    name = "picamera2"
    live = True
    reconnectable = True

    def __init__(
        self,
        camera: int = 0,
        *,
        lores: tuple[int, int] = (640, 360),
        main: tuple[int, int] = (1920, 1080),
        fps: float = 10.0,
    ):
        self.camera = camera
        self.lores = (lores[0] - lores[0] % 2, lores[1] - lores[1] % 2)  # YUV420 needs even sizes
        self.main = main
        self._fps = fps
        self._cam: Any = None  # a Picamera2 once open
        self._index = 0

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "picamera2 is not installed: on Raspberry Pi OS `sudo apt install python3-picamera2` and create "
                "the venv with --system-site-packages; it does not exist on other machines"
            ) from None
        cam = None
        try:
            cam = Picamera2(self.camera)
            config = cam.create_video_configuration(
                main={"size": self.main, "format": "RGB888"},  # RGB888 arrives as BGR byte order
                lores={"size": self.lores, "format": "YUV420"},
                controls={"FrameRate": self._fps},
                buffer_count=4,
                queue=False,  # newest frame only: never analyse a stale queued one
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError/IndexError for absent cameras
            if cam is not None:  # a half-started camera keeps libcamera's lock: the retry would fail
                try:
                    cam.close()
                except Exception:
                    log.debug("error closing a camera that failed to start", exc_info=True)
            # an absent or busy camera (ribbon loose, another process holds it) may come back; a missing
            # picamera2 above cannot, so it stays a plain SourceError
            raise SourceUnavailable(f"cannot start camera {self.camera}: {exc}") from None
        self._cam = cam

    def read(self) -> Frame | None:
        if self._cam is None:
            raise SourceLost("camera not open")
        try:
            request = self._cam.capture_request()
        except Exception as exc:
            raise SourceLost(f"camera {self.camera} stopped: {exc}") from None
        try:
            yuv = request.make_array("lores")
            main = request.make_array("main")
        finally:
            request.release()
        image = cv2.cvtColor(yuv, cv2.COLOR_YUV420p2BGR)
        now = time.monotonic()
        frame = Frame(image, self._index, now, now, main=main)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:  # closing a camera that already failed must not mask the first error
                log.debug("error while closing camera", exc_info=True)
            self._cam = None
