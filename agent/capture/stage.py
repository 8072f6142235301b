"""The capture thread: reads a source, paces recorded ones, reconnects live ones, hands over frames.

A live camera that is not there yet (an IP camera that boots after the Pi, a USB camera that
enumerates late) or goes away is waited for: the thread retries with a capped exponential backoff
for as long as the agent runs, and the rest of the node (uplink, modem, status page, telemetry)
keeps working meanwhile. Only what waiting cannot cure stops the agent: a file that does not exist,
a source the machine cannot have (picamera2 not installed). `snapshot()` tells the health stage
and the status page where the camera stands; turning that into debounced events is
agent.health.camera's job, not this thread's.

Hand-over is a one-frame slot. For live sources and paced playback the newest frame wins and every
overwritten frame is counted as dropped (the detector must never work on a stale queue). For
as-fast-as-possible playback the slot blocks the reader instead, so every frame is analysed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.capture.base import Frame, FrameSource, SourceError, SourceLost, SourceUnavailable
from agent.lifecycle import BackgroundLoop, deadline_in, resolve_deadline

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

CONNECTING = "connecting"  # a live source that has not delivered a frame yet
STREAMING = "streaming"
RECONNECTING = "reconnecting"  # it delivered, went away, and is being reopened
ENDED = "ended"  # the recording ended, or the source failed for good


@dataclass(frozen=True)
class CaptureSnapshot:
    """Where the source stands, read in one piece (the capture thread changes it)."""

    state: str
    reason: str | None  # why it is not streaming: the last open error or what ended the stream
    since: float  # monotonic instant this state began
    last_frame_mono: float | None  # monotonic instant of the newest frame read, None before the first
    frames_read: int
    drops: int  # times a stream that had delivered frames went away
    open_failures: int  # failed open attempts, in all
    attempts: int  # failed open attempts in the current outage
    retry_at: float | None  # monotonic instant of the next open attempt while waiting for the source
    down_s: float  # seconds a live source was away, over the outages that have ended
    live: bool = True  # the source produces frames in real time (a camera), so silence means trouble

    @property
    def streaming(self) -> bool:
        return self.state == STREAMING

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "state": self.state,
            "reason": self.reason,
            "for_s": round(now - self.since, 1),
            "last_frame_age_s": round(now - self.last_frame_mono, 1) if self.last_frame_mono is not None else None,
            "drops": self.drops,
            "open_failures": self.open_failures,
            "attempts": self.attempts,
            "retry_in_s": round(max(0.0, self.retry_at - now), 1) if self.retry_at is not None else None,
            "down_s": round(self.down_s + (0.0 if self.streaming or self.state == ENDED else now - self.since), 1),
        }


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
        first_open_wait_s: float = 5.0,
    ) -> None:
        self.source = source
        self.realtime = realtime
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.first_open_wait_s = first_open_wait_s
        self.on_state = on_state or (lambda state, reason: None)
        paced_or_live = source.live or realtime
        self.slot = FrameSlot(block_when_full=not paced_or_live)
        self._loop = BackgroundLoop("capture", self._run)
        self._stop = self._loop.stopping
        # Who closes the source: stop(), or the capture thread when stop() gave up waiting for it
        # (closing a VideoCapture under a read in progress can crash the process).
        self._close_lock = threading.Lock()
        self._thread_done = False
        self._close_when_done = False
        self._started = False
        self._first_open = threading.Event()  # set when the first open attempt has an outcome
        self._fatal: SourceError | None = None  # the first open failed in a way waiting cannot cure
        self._state_lock = threading.Lock()
        self._state = CONNECTING
        self._reason: str | None = None
        self._since = time.monotonic()
        self._last_frame_mono: float | None = None
        self._retry_at: float | None = None
        self.reconnects = 0  # successful reopens
        self.frames_read = 0
        self.drops = 0
        self.open_failures = 0
        self._attempts = 0
        self._down_s = 0.0

    @property
    def waits_for_source(self) -> bool:
        """Live sources are waited for when absent; recordings and the synthetic scene are not."""
        return self.source.live and self.source.reconnectable

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> CaptureStage:
        """Open the source: a bad path or an impossible source fails here, before anything else starts.

        A live source is opened on the capture thread; start() waits up to `first_open_wait_s` for
        that first attempt so a healthy camera streams when it returns, but a camera that is absent
        or slow to answer only delays the rest of the node by that much.
        """
        if not self.waits_for_source:
            self.source.open()
            self._set_state(STREAMING, None)
            self._first_open.set()
        self._started = True
        self._loop.start()
        self._first_open.wait(self.first_open_wait_s)
        if self._fatal is not None:
            self._loop.join(deadline_in(self.first_open_wait_s))
            raise self._fatal
        return self

    def stop(self, deadline: float | None = None) -> None:
        """Stop reading by `deadline`; a read blocked in the camera is left to its daemon thread."""
        deadline = resolve_deadline(deadline)
        self._loop.request_stop()
        self.slot.close()
        self._loop.join(deadline)
        with self._close_lock:
            if self._started and not self._thread_done:
                log.warning(
                    "capture thread did not stop by its deadline (a blocked camera call); "
                    "the source is closed when that call returns"
                )
                self._close_when_done = True
                return
        self._close_source()

    def status(self) -> dict[str, object]:
        return self.snapshot().as_dict(time.monotonic())

    def alive(self) -> bool:
        """The capture thread is doing its job: reading, or waiting for a source that is away.

        False only when it died without ending the stream (a bug): what the watchdog must hear about.
        """
        return self._loop.alive() or self.slot.ended or self._stop.is_set()

    # -- state ------------------------------------------------------------------------------------
    def status_line(self) -> str:
        """One line for systemd's STATUS=: analysing, or waiting for the camera and why."""
        snap = self.snapshot()
        if snap.state in (CONNECTING, RECONNECTING) and self.waits_for_source and snap.reason:
            return f"waiting for the camera ({snap.reason}); everything else runs"
        return f"analysing {self.source.name}"

    @property
    def lost(self) -> bool:
        """A live source is being waited for (not opened yet, or reopening after a loss)."""
        with self._state_lock:
            return self._state in (CONNECTING, RECONNECTING) and self.waits_for_source

    def snapshot(self) -> CaptureSnapshot:
        with self._state_lock:
            return CaptureSnapshot(
                state=self._state,
                reason=self._reason,
                since=self._since,
                last_frame_mono=self._last_frame_mono,
                frames_read=self.frames_read,
                drops=self.drops,
                open_failures=self.open_failures,
                attempts=self._attempts,
                retry_at=self._retry_at,
                down_s=self._down_s,
                live=self.source.live,
            )

    def _set_state(self, state: str, reason: str | None) -> None:
        with self._state_lock:
            if state != self._state:
                self._since = time.monotonic()
            self._state, self._reason = state, reason
            if state == STREAMING:
                self._attempts, self._retry_at = 0, None

    # -- the capture thread -----------------------------------------------------------------------
    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.debug("error closing source", exc_info=True)

    def _run(self, _loop: BackgroundLoop) -> None:
        started_mono: float | None = None
        first_t = 0.0
        backoff = self.reconnect_initial_s
        try:
            if self.waits_for_source and not self._wait_for_source(first=True):
                return
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except SourceLost as exc:
                    if not self.source.reconnectable:
                        self._end(exc)
                        return
                    self._dropped(str(exc), backoff)
                    self._close_source()
                    if self._stop.wait(backoff) or not self._wait_for_source(first=False):
                        return
                    backoff = min(backoff * 2, self.reconnect_max_s)
                    continue
                if frame is None:
                    self._end(None)
                    return
                if self._delivered(frame):
                    backoff = self.reconnect_initial_s
                if self.realtime and not self.source.live:
                    if started_mono is None:
                        started_mono, first_t = time.monotonic(), frame.t
                    delay = started_mono + (frame.t - first_t) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                self.slot.put(frame, self._stop)
        except Exception as exc:  # a source bug must end the stream visibly, not hang the agent
            log.exception("capture failed")
            self._end(exc)
        finally:
            self._first_open.set()
            with self._close_lock:
                self._thread_done = True
                close_now = self._close_when_done
            if close_now:
                self._close_source()

    def _delivered(self, frame: Frame) -> bool:
        """Count a frame; True when it is the first one since the source was opened."""
        now = time.monotonic()
        with self._state_lock:
            first = self._state != STREAMING
            outage = first and self._reason is not None  # not the first frame of a healthy start
            if outage:
                self._down_s += now - self._since
            if first:
                self._state, self._reason, self._since = STREAMING, None, now
                self._attempts, self._retry_at = 0, None
            self.frames_read += 1
            self._last_frame_mono = now
        if outage:
            log.info("%s: frames flowing again", self._describe())
            self.on_state("recovered", "frames flowing again")
        return first

    def _dropped(self, reason: str, backoff: float) -> None:
        with self._state_lock:
            now = time.monotonic()
            self._state, self._reason, self._since = RECONNECTING, reason, now
            self.drops += 1
            self._retry_at = now + backoff
        log.warning("%s; reopening in %.1fs", reason, backoff)
        self.on_state("lost", reason)

    def _end(self, error: Exception | None) -> None:
        self._set_state(ENDED, str(error) if error is not None else None)
        self.slot.close(error)

    def _describe(self) -> str:
        describe = getattr(self.source, "describe", None)
        return describe() if callable(describe) else self.source.name

    def _wait_for_source(self, *, first: bool) -> bool:
        """Open the live source, retrying with capped backoff until it opens; False when stopping
        (or when the very first open failed in a way no wait can cure)."""
        backoff = self.reconnect_initial_s
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceUnavailable as exc:
                self._open_failed(str(exc), backoff, first=first)
            except SourceError as exc:
                if first and self.open_failures == 0:
                    self._fatal = exc  # e.g. picamera2 not installed: start() reports it
                    self._end(exc)
                    return False
                self._open_failed(str(exc), backoff, first=first)  # it worked once: keep trying
            else:
                with self._state_lock:
                    self._retry_at = None
                    attempts = self._attempts
                if not first:
                    self.reconnects += 1
                if attempts:
                    log.info("%s: opened after %d failed attempt(s)", self._describe(), attempts)
                self._first_open.set()
                return True
            self._first_open.set()
            if self._stop.wait(backoff):
                return False
            backoff = min(backoff * 2, self.reconnect_max_s)
        return False

    def _open_failed(self, reason: str, backoff: float, *, first: bool) -> None:
        with self._state_lock:
            self.open_failures += 1
            self._attempts += 1
            attempts = self._attempts
            self._retry_at = time.monotonic() + backoff
        self._set_state(CONNECTING if first else RECONNECTING, reason)
        if first and attempts == 1:  # a drop was reported when it happened; a failed start is reported here
            self.on_state("lost", reason)
        # logarithmic: a camera away for a day does not fill the journal (1st, 2nd, 4th, 8th… attempt)
        if attempts & (attempts - 1) == 0:
            log.warning("%s; retrying in %.1fs (attempt %d)", reason, backoff, attempts)
        else:
            log.debug("%s; retrying in %.1fs (attempt %d)", reason, backoff, attempts)
