"""The capture thread: reads a source, paces recorded ones, reconnects live ones, hands over frames.

Hand-over is a one-frame slot. For live sources and paced playback the newest frame wins and every
overwritten frame is counted as dropped (the detector must never work on a stale queue). For
as-fast-as-possible playback the slot blocks the reader instead, so every frame is analysed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.capture.base import Frame, FrameSource, SourceError, SourceLost

log = logging.getLogger(__name__)


class FrameSlot:
    """A single-frame hand-over between the capture thread and the analysis loop."""

    def __init__(self, *, block_when_full: bool) -> None:
        self.block_when_full = block_when_full
        self._frame: Frame | None = None
        self._closed = False
        self.error: Exception | None = None
        self.dropped = 0
        self.delivered = 0
        self._cond = threading.Condition()

    def put(self, frame: Frame, stop: threading.Event) -> None:
        with self._cond:
            if self.block_when_full:
                while self._frame is not None and not stop.is_set() and not self._closed:
                    self._cond.wait(0.1)
            elif self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The newest frame, or None on timeout or when the stream has ended (check `ended`)."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self.delivered += 1
            self._cond.notify_all()
            return frame

    def close(self, error: Exception | None = None) -> None:
        with self._cond:
            self._closed = True
            self.error = error
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._closed and self._frame is None


SourceState = Callable[[str, str], None]  # ("lost" | "recovered", reason)


class CaptureStage:
    """Owns the source and the `capture` thread; start()/stop() like every stage."""

    def __init__(
        self,
        source: FrameSource,
        *,
        realtime: bool = True,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        on_state: SourceState | None = None,
    ) -> None:
        self.source = source
        self.realtime = realtime
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.on_state = on_state or (lambda state, reason: None)
        paced_or_live = source.live or realtime
        self.slot = FrameSlot(block_when_full=not paced_or_live)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Who closes the source: stop(), or the capture thread when stop() gave up waiting for it
        # (closing a VideoCapture under a read in progress can crash the process).
        self._close_lock = threading.Lock()
        self._thread_done = False
        self._close_when_done = False
        self.reconnects = 0
        self.frames_read = 0
        self.lost = False
        self._started = False

    def start(self) -> CaptureStage:
        """Open the source now, so a bad path or absent camera fails before anything else starts."""
        self.source.open()
        self._started = True
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._close_lock:
            if self._started and not self._thread_done:
                log.warning(
                    "capture thread did not stop within %.1fs (a blocked camera read); "
                    "the source is closed when that read returns",
                    timeout,
                )
                self._close_when_done = True
                return
        self._close_source()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.debug("error closing source", exc_info=True)

    def _run(self) -> None:
        started_mono: float | None = None
        first_t = 0.0
        backoff = self.reconnect_initial_s
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except SourceLost as exc:
                    if not self.source.reconnectable:
                        self.slot.close(exc)
                        return
                    self._reconnect(str(exc), backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
                    continue
                if frame is None:
                    self.slot.close()
                    return
                if self.lost:
                    self.lost = False
                    backoff = self.reconnect_initial_s
                    self.on_state("recovered", "frames flowing again")
                self.frames_read += 1
                if self.realtime and not self.source.live:
                    if started_mono is None:
                        started_mono, first_t = time.monotonic(), frame.t
                    delay = started_mono + (frame.t - first_t) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                self.slot.put(frame, self._stop)
        except Exception as exc:  # a source bug must end the stream visibly, not hang the agent
            log.exception("capture failed")
            self.slot.close(exc)
        finally:
            with self._close_lock:
                self._thread_done = True
                close_now = self._close_when_done
            if close_now:
                self._close_source()

    def _reconnect(self, reason: str, backoff: float) -> None:
        if not self.lost:
            self.lost = True
            self.on_state("lost", reason)
        log.warning("%s; reopening in %.1fs", reason, backoff)
        try:
            self.source.close()
        except Exception:
            log.debug("error closing lost source", exc_info=True)
        if self._stop.wait(backoff):
            return
        try:
            self.source.open()
            self.reconnects += 1
        except SourceError as exc:
            log.warning("reopen failed: %s", exc)
